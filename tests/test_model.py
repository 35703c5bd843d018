"""`Model`: a registered version wrapping its flavor — what it predicts, which signature it
answers to, how it checks the inputs it is given and the rows its flavor answers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelport import Model, Registry, Settings
from modelport.errors import FlavorError, InvalidInput, ModelOutputError
from small_models import DropsFirstRow, cancer


class ThreadOf:
    """Answers, for each row, the id of the thread that ran it."""

    def predict(self, x: Any) -> Any:
        import threading

        import numpy as np

        return np.full(len(x), threading.get_native_id(), dtype=np.int64)


class RowSums:
    """Each row's sum: NaN in, NaN out."""

    def predict(self, x: Any) -> Any:
        import numpy as np

        return np.asarray(x, dtype=np.float64).sum(axis=1)


@pytest.fixture
def reg(settings: Settings) -> Iterator[Registry]:
    r = Registry(settings=settings)
    yield r
    r.close()


@pytest.fixture
def model(reg: Registry) -> Model:
    X, fitted = cancer()
    reg.register("cancer", fitted, sample_input=X[:5])
    reg.set_alias("cancer", "production", 1)
    return reg.load("cancer@production")


def test_a_loaded_model_is_the_version_registered(reg: Registry, model: Model) -> None:
    record = reg.get_version("cancer", 1)
    assert (model.name, model.version, model.record) == ("cancer", 1, record)
    assert model.signature == record.signature
    assert [f.name for f in model.signature.inputs] == list(cancer()[0].columns)
    assert [f.name for f in model.signature.outputs] == ["predictions", "probabilities"]
    assert repr(model) == "<Model cancer:1 (sklearn)>"


def test_predict_answers_as_the_fitted_model_whatever_the_input_s_shape(model: Model) -> None:
    X, fitted = cancer()
    expected = fitted.predict(X[:4])
    for given in (X[:4], X.values[:4], X.values[:4].tolist(), X[:4].to_dict(orient="records")):
        np.testing.assert_array_equal(model.predict(given), expected)


def test_predict_gives_the_first_output_or_the_one_named(model: Model) -> None:
    X, fitted = cancer()
    np.testing.assert_allclose(model.predict(X[:4], output="probabilities"),
                               fitted.predict_proba(X[:4]))
    batch = model.predict_batch(model.signature.decode(X[:4]))
    assert list(batch) == ["predictions", "probabilities"]
    np.testing.assert_array_equal(batch["predictions"], model.predict(X[:4]))


def test_the_signature_s_sample_is_answered(model: Model) -> None:
    outputs = model.predict_batch(model.signature.sample_batch())
    assert len(outputs["predictions"]) == 5


@pytest.mark.parametrize(("change", "words"), [
    (lambda X: X.drop(columns=["mean radius"]), "missing field 'mean radius'"),
    (lambda X: X.assign(**{"mean perimeter": [1.0, np.nan, 1.0]}),
     "column 'mean perimeter': null/NaN at row 1 is not allowed"),
    (lambda X: X.assign(**{"mean area": ["a", "b", "c"]}), "mean area"),
    (lambda X: X.values[:, :3].tolist(), "expected rows of 30 values"),
])
def test_inputs_that_do_not_fit_the_signature_are_refused_naming_what(
        model: Model, change: Any, words: str) -> None:
    X = cancer()[0][:3].reset_index(drop=True)
    with pytest.raises(InvalidInput, match=words.replace("(", r"\(")):
        model.predict(change(X))


def test_nan_reaches_the_model_only_when_its_signature_allows_it(reg: Registry) -> None:
    rows = np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]])
    reg.register("strict", RowSums(), sample_input=np.ones((2, 3)))
    reg.register("lenient", RowSums(), sample_input=np.ones((2, 3)), allow_nan=True)
    with pytest.raises(InvalidInput, match="NaN"):
        reg.load("strict:1", trusted=True).predict(rows)
    answers = reg.load("lenient:1", trusted=True).predict(rows)
    assert np.isnan(answers[0]) and answers[1] == 6.0


def test_rows_the_flavor_answers_wrongly_are_refused_not_handed_out(reg: Registry) -> None:
    reg.register("drops", DropsFirstRow(), sample_input=np.ones((1, 3)))
    model = reg.load("drops:1", trusted=True)
    assert model.predict(np.ones((1, 3))).tolist() == [6.0]  # one row: its own answer
    with pytest.raises(ModelOutputError) as info:
        model.predict(np.ones((3, 3)))
    assert str(info.value) == ("model drops:1 answered 2 rows of 'predictions' for a batch "
                               "of 3 rows; no answer from it is used")


def test_a_flavor_that_runs_code_is_loaded_only_when_trusted(reg: Registry) -> None:
    reg.register("sums", RowSums(), sample_input=np.ones((1, 3)))
    with pytest.raises(FlavorError, match="trusted=True"):
        reg.load("sums:1")
    assert reg.load("sums:1", trusted=True).predict([[1, 2, 3]]).tolist() == [6.0]


async def test_infer_runs_the_model_off_the_event_loop(reg: Registry) -> None:
    reg.register("threads", ThreadOf(), sample_input=np.ones((1, 3)))
    model = reg.load("threads:1", trusted=True)
    batch = model.signature.decode(np.ones((2, 3)))
    loop_thread = threading.get_native_id()
    default = await model.infer(batch)
    with ThreadPoolExecutor(1) as executor:
        own = await model.infer(batch, executor)
        executor_thread = executor.submit(threading.get_native_id).result()
    assert loop_thread not in default["predictions"].tolist()
    assert own["predictions"].tolist() == [executor_thread] * 2


def test_predict_takes_a_dataframe_with_its_columns_in_any_order(model: Model) -> None:
    X, fitted = cancer()
    shuffled = X[:4][list(reversed(X.columns))]
    assert isinstance(shuffled, pd.DataFrame)
    np.testing.assert_array_equal(model.predict(shuffled), fitted.predict(X[:4]))


def test_concurrent_infers_each_get_their_own_rows(model: Model) -> None:
    X, fitted = cancer()

    async def main() -> list[Any]:
        return await asyncio.gather(*(
            model.infer(model.signature.decode(X[i:i + 2])) for i in range(0, 20, 2)))

    answers = asyncio.run(main())
    got = np.concatenate([a["predictions"] for a in answers])
    np.testing.assert_array_equal(got, fitted.predict(X[:20]))
