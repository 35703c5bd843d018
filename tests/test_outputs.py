"""Only the outputs a caller asks for are computed: a label costs no probabilities, both
come from one pass where the labels are the probabilities' argmax (ties: the first of
the tied classes), and callers asking different outputs still share batches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from modelport import Model, Registry, Settings
from modelport.dataplane import DataPlane, ModelConfig
from modelport.errors import InvalidInput
from modelport.outputs import Outputs

LABELS, PROBA = "predictions", "probabilities"


@pytest.fixture
def reg(settings: Settings) -> Iterator[Registry]:
    r = Registry(settings=settings)
    yield r
    r.close()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, Any]:
    X, y = load_digits(return_X_y=True)
    return X, HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(X, y)


def load(reg: Registry, name: str, fitted: Any, sample: np.ndarray) -> Model:
    mv = reg.register(name, fitted, sample_input=sample)
    return reg.load(f"{name}:{mv.version}")


def refuse(obj: Any, method: str) -> None:
    def refused(*_: Any, **__: Any) -> Any:
        raise AssertionError(f"{method}() was not asked for")

    setattr(obj, method, refused)


def test_a_label_alone_never_runs_predict_proba(reg: Registry, digits: Any) -> None:
    X, fitted = digits
    model = load(reg, "heavy", fitted, X[:5])
    refuse(model.flavor.model, "predict_proba")
    out = model.predict_batch(model.signature.decode(X[:50]), frozenset({LABELS}))
    assert list(out) == [LABELS]
    np.testing.assert_array_equal(out[LABELS], fitted.predict(X[:50]))


def test_probabilities_alone_never_run_predict(reg: Registry, digits: Any) -> None:
    X, fitted = digits
    model = load(reg, "heavy", fitted, X[:5])
    refuse(model.flavor.model, "predict")
    out = model.predict_batch(model.signature.decode(X[:50]), frozenset({PROBA}))
    assert list(out) == [PROBA]
    np.testing.assert_allclose(out[PROBA], fitted.predict_proba(X[:50]))


def test_both_come_from_one_pass_and_match_the_models_own_labels(
        reg: Registry, digits: Any) -> None:
    X, fitted = digits
    model = load(reg, "heavy", fitted, X[:5])
    refuse(model.flavor.model, "predict")  # labels are argmax(predict_proba)
    out = model.predict_batch(model.signature.decode(X))
    np.testing.assert_array_equal(out[LABELS], fitted.predict(X))
    np.testing.assert_allclose(out[PROBA], fitted.predict_proba(X))


def test_a_tie_goes_to_the_first_tied_class_in_classes_order(reg: Registry) -> None:
    X, y = load_iris(return_X_y=True)
    three = LogisticRegression(max_iter=1000).fit(X, y)
    three.coef_[:], three.intercept_[:] = 0.0, 0.0  # every class 1/3: a three-way tie
    model = load(reg, "tie3", three, X[:5])
    out = model.predict_batch(model.signature.decode(X[:4]))
    assert out[LABELS].tolist() == [three.classes_[0]] * 4

    # a score of 1e-20 is class 1 to predict() (score > 0), but its sigmoid rounds to
    # exactly 0.5: asked with probabilities, the label is that tie's first class
    binary = LogisticRegression().fit(X[y < 2], y[y < 2])
    binary.coef_[:], binary.intercept_[:] = 0.0, 1e-20
    assert binary.predict(X[:1]).tolist() == [1]
    model = load(reg, "tie2", binary, X[:5])
    both = model.predict_batch(model.signature.decode(X[:1]))
    assert both[PROBA].tolist() == [[0.5, 0.5]]
    assert both[LABELS].tolist() == [0]
    alone = model.predict_batch(model.signature.decode(X[:1]), frozenset({LABELS}))
    assert alone[LABELS].tolist() == [1]  # the model's own predict(), untouched


def test_an_unknown_output_is_refused_naming_it() -> None:
    outputs = Outputs((LABELS, PROBA))
    with pytest.raises(InvalidInput, match=r"unknown outputs 'label', 'proba'; this "
                                           r"model returns \['predictions', 'probabilities'\]"):
        outputs.ask(["label", LABELS, "proba"])
    assert outputs.ask([PROBA, LABELS]) is None  # everything: as if nothing was asked
    assert outputs.ask([PROBA]) == {PROBA}


# --- through the data plane's batcher -----------------------------------------------------


@pytest.fixture
async def served(reg: Registry, settings: Settings, digits: Any
                 ) -> AsyncIterator[tuple[DataPlane, list[frozenset[str] | None]]]:
    """The heavy model behind a data plane, with every model call's outputs recorded."""
    X, fitted = digits
    reg.set_alias("heavy", "production", reg.register("heavy", fitted, sample_input=X[:5])
                  .version)
    dp = DataPlane(reg, settings, [ModelConfig(ref="heavy@production")])
    await dp.start(follow=False)
    model = dp.deployment("heavy").model
    calls: list[frozenset[str] | None] = []
    predict_batch = model.predict_batch

    def spy(batch: Any, outputs: frozenset[str] | None = None) -> Any:
        calls.append(outputs)
        return predict_batch(batch, outputs)

    model.predict_batch = spy  # type: ignore[method-assign]
    yield dp, calls
    await dp.stop()


async def test_callers_asking_different_outputs_each_get_exactly_theirs(
        served: Any, digits: Any) -> None:
    dp, calls = served
    X, fitted = digits
    deployment = dp.deployment("heavy")
    asks = [None, [LABELS], [PROBA]] * 20
    answers = await asyncio.gather(*(
        dp.predict(deployment, deployment.model.signature.decode(X[i:i + 1]), outputs=ask)
        for i, ask in enumerate(asks)))
    for i, (ask, out) in enumerate(zip(asks, answers, strict=True)):
        assert list(out) == (ask or [LABELS, PROBA])
        if LABELS in out:
            assert out[LABELS].tolist() == fitted.predict(X[i:i + 1]).tolist()
        if PROBA in out:
            np.testing.assert_allclose(out[PROBA], fitted.predict_proba(X[i:i + 1]))
    assert len(calls) < len(asks)  # they shared batches (each computing their union)


async def test_a_batch_of_label_callers_computes_no_probabilities(
        served: Any, digits: Any) -> None:
    dp, calls = served
    X, fitted = digits
    deployment = dp.deployment("heavy")
    refuse(deployment.model.flavor.model, "predict_proba")
    answers = await asyncio.gather(*(
        dp.predict(deployment, deployment.model.signature.decode(X[i:i + 1]),
                   outputs=[LABELS]) for i in range(20)))
    assert [a[LABELS][0] for a in answers] == fitted.predict(X[:20]).tolist()
    assert set(calls) == {frozenset({LABELS})}


async def test_an_unknown_output_is_refused_before_anything_is_queued(
        served: Any, digits: Any) -> None:
    dp, calls = served
    X, _ = digits
    deployment = dp.deployment("heavy")
    calls.clear()
    with pytest.raises(InvalidInput, match="unknown output 'label'"):
        await dp.predict(deployment, deployment.model.signature.decode(X[:1]),
                         outputs=["label"])
    assert calls == []
