"""Every flavor round-trips through the registry: register → alias → load → same answers.

Models are small and trained once per module; each test gets its own registry home.
"""

from __future__ import annotations

import array
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from modelport import Model, Registry, Settings
from modelport.errors import FlavorError, InvalidInput
from modelport.flavors import get_flavor, infer_flavor
from modelport.flavors.sklearn import SklearnFlavor


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """OpenMP workers spin while they wait: on a busy machine a 0.1 s fit takes seconds."""
    import lightgbm  # noqa: F401  (load every OpenMP runtime, so that the limit reaches it)
    import xgboost  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


# --- data and models, trained once ------------------------------------------------------


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, pd.Series]:
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return X, y


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_diabetes(return_X_y=True)
    return X, y


@pytest.fixture(scope="module")
def pipeline(cancer: tuple[pd.DataFrame, pd.Series]) -> Pipeline:
    X, y = cancer
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)


@pytest.fixture
def reg(settings: Settings) -> Iterator[Registry]:
    registry = Registry(settings=settings)
    yield registry
    registry.close()


def round_trip(reg: Registry, name: str, model: Any, sample: Any, **kw: Any) -> Model:
    """Register `model`, point `production` at it, and load it back by that alias."""
    mv = reg.register(name, model, sample_input=sample, **kw)
    reg.set_alias(name, "production", mv.version)
    loaded = reg.load(f"{name}@production", trusted=kw.get("trusted", False))
    assert loaded.version == mv.version
    return loaded


# --- sklearn --------------------------------------------------------------------------


def test_sklearn_pipeline_on_a_dataframe(
    reg: Registry, pipeline: Pipeline, cancer: tuple[pd.DataFrame, pd.Series]
) -> None:
    X, _ = cancer
    model = round_trip(reg, "cancer", pipeline, X.head(5))

    assert model.record.flavor == "sklearn"
    assert model.record.options["format"] == "skops"
    sig = model.signature
    assert sig.layout == "columns"
    assert [s.name for s in sig.inputs] == list(X.columns)
    assert {s.datatype for s in sig.inputs} == {"FP64"}
    assert [o.describe() for o in sig.outputs] == ["predictions: INT64", "probabilities: FP64 [2]"]
    np.testing.assert_array_equal(model.predict(X), pipeline.predict(X))
    np.testing.assert_allclose(model.predict(X, output="probabilities"), pipeline.predict_proba(X))
    # people send records or rows rather than DataFrames: same answers
    records = X.head(20).to_dict(orient="records")
    np.testing.assert_array_equal(model.predict(records), pipeline.predict(X.head(20)))
    np.testing.assert_array_equal(
        model.predict(X.head(20).to_numpy().tolist()), pipeline.predict(X.head(20))
    )


@pytest.mark.parametrize("make", [
    lambda: RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0),
    lambda: ExtraTreesClassifier(n_estimators=3, random_state=0),
    lambda: CalibratedClassifierCV(LogisticRegression(max_iter=1000), cv=3),
], ids=["random-forest", "extra-trees", "calibrated"])
@pytest.mark.parametrize("data", [load_iris, load_breast_cancer], ids=["3-classes", "2-classes"])
def test_labels_of_an_argmax_classifier_come_from_its_one_pass(
        reg: Registry, make: Any, data: Any) -> None:
    X, y = data(return_X_y=True)
    fitted = make().fit(X, y)
    model = round_trip(reg, "forest", fitted, X[:5])
    loaded = model.flavor.model

    def refused(_: Any) -> Any:
        raise AssertionError("predict() is not needed: the labels are argmax(proba)")

    loaded.predict = refused
    labels = model.predict(X)
    np.testing.assert_array_equal(labels, fitted.predict(X))  # ties included: few trees
    np.testing.assert_array_equal(model.predict(X, output="probabilities"),
                                  fitted.predict_proba(X))


def test_the_argmax_classifiers_are_named_where_scikit_learn_defines_them() -> None:
    # ARGMAX_OF_PROBA and ARGMAX_OF_SCORES name classes by the private module that
    # defines them (what type(model) says): when scikit-learn moves one, its fast path
    # would silently end
    import importlib

    from sklearn import calibration, ensemble, linear_model, tree

    from modelport.flavors.sklearn import ARGMAX_OF_PROBA, ARGMAX_OF_SCORES

    for path in sorted(ARGMAX_OF_PROBA | ARGMAX_OF_SCORES):
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            pytest.fail(f"scikit-learn moved {path} ({exc}): update ARGMAX_OF_PROBA")
        assert f"{cls.__module__}.{cls.__qualname__}" == path, \
            f"scikit-learn moved {path} to {cls.__module__}: update ARGMAX_OF_PROBA"
    public = [ensemble.RandomForestClassifier, ensemble.ExtraTreesClassifier,
              ensemble.BaggingClassifier, calibration.CalibratedClassifierCV]
    assert {f"{c.__module__}.{c.__qualname__}" for c in public} == ARGMAX_OF_PROBA
    public = [ensemble.HistGradientBoostingClassifier, ensemble.GradientBoostingClassifier,
              linear_model.LogisticRegression, tree.DecisionTreeClassifier]
    assert {f"{c.__module__}.{c.__qualname__}" for c in public} == ARGMAX_OF_SCORES


def test_other_classifiers_answer_their_own_predict(reg: Registry) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    X, y = load_iris(return_X_y=True)
    # a vote of neighbours: not named as an argmax of its probabilities
    fitted = KNeighborsClassifier().fit(X, y)
    model = round_trip(reg, "neighbours", fitted, X[:5])
    loaded = model.flavor.model
    calls: list[int] = []
    predict = loaded.predict
    loaded.predict = lambda x: calls.append(len(x)) or predict(x)
    np.testing.assert_array_equal(model.predict(X), fitted.predict(X))
    assert calls == [len(X)]



def test_a_pipelines_steps_are_applied_once_for_both_outputs(
        reg: Registry, cancer: tuple[pd.DataFrame, pd.Series]) -> None:
    X, y = cancer
    fitted = Pipeline([("scale", StandardScaler()), ("skip", "passthrough"),
                       ("none", None), ("clf", LogisticRegression(max_iter=1000))]).fit(X, y)
    model = round_trip(reg, "steps", fitted, X.head(5))
    scaler = model.flavor.model.named_steps["scale"]
    calls: list[int] = []
    transform = scaler.transform
    scaler.transform = lambda x: calls.append(len(x)) or transform(x)
    np.testing.assert_array_equal(model.predict(X), fitted.predict(X))
    assert calls == [len(X)]  # once, though labels and probabilities both need it
    # step by step and through the Pipeline may round the last bit differently
    np.testing.assert_allclose(model.predict(X, output="probabilities"),
                               fitted.predict_proba(X), rtol=1e-12, atol=1e-15)


def test_scikit_learn_skips_its_nan_check_only_when_the_signature_made_it(
        reg: Registry) -> None:
    import sklearn

    X, y = load_iris(return_X_y=True)
    fitted = LogisticRegression(max_iter=1000).fit(X, y)
    seen: dict[str, bool] = {}

    def spying(model: Model) -> Model:
        predict_proba = model.flavor.model.predict_proba

        def spy(x: Any) -> Any:
            seen[model.name] = sklearn.get_config()["assume_finite"]
            return predict_proba(x)

        model.flavor.model.predict_proba = spy
        return model

    strict = spying(round_trip(reg, "strict", fitted, X[:5]))
    np.testing.assert_array_equal(strict.predict(X), fitted.predict(X))
    with pytest.raises(InvalidInput, match="rejects NaN/inf"):  # refused before the model
        strict.predict([[np.nan, 1.0, 1.0, 1.0]])
    lenient = spying(round_trip(reg, "lenient", fitted, X[:5], allow_nan=True))
    with pytest.raises(ValueError, match="NaN"):  # scikit-learn's own check still runs
        lenient.predict([[np.nan, 1.0, 1.0, 1.0]])
    assert seen == {"strict": True, "lenient": False}
    assert not sklearn.get_config()["assume_finite"]  # for this call only

@pytest.mark.parametrize(
    "regressor",
    [Ridge(alpha=0.5), RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0)],
    ids=["ridge", "random-forest"],
)
def test_sklearn_regressor(
    reg: Registry, regressor: Any, diabetes: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = diabetes
    regressor.fit(X, y)
    model = round_trip(reg, "diabetes", regressor, X[:5])

    assert model.signature.layout == "tensor"
    assert model.signature.inputs[0].describe() == "input: FP64 [10]"
    assert [o.describe() for o in model.signature.outputs] == ["predictions: FP64"]
    np.testing.assert_allclose(model.predict(X), regressor.predict(X))


def test_hist_gradient_boosting_records_the_types_it_needs(reg: Registry) -> None:
    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]
    clf = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(X, y)
    model = round_trip(reg, "digits", clf, X[:5])

    trusted = model.record.options["trusted_types"]
    assert "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor" in trusted
    np.testing.assert_array_equal(model.predict(X), clf.predict(X))
    np.testing.assert_allclose(model.predict(X, output="probabilities"), clf.predict_proba(X))


def test_skops_artifact_with_types_nobody_vouched_for_is_refused(tmp_path: Path) -> None:
    X, y = load_digits(return_X_y=True)
    clf = HistGradientBoostingClassifier(max_iter=3).fit(X[:300], y[:300])
    options = SklearnFlavor.save(clf, tmp_path)
    options["trusted_types"] = []  # as if the registry's record had been tampered with

    with pytest.raises(FlavorError, match=r"nobody vouched for.*TreePredictor"):
        SklearnFlavor(tmp_path, options).load()




@pytest.mark.parametrize(
    "extra",
    # array.array: skops cannot dump it; a compiled regex: it dumps but cannot load back
    [array.array("d", [1.0, 2.0]), re.compile(r"\w+")],
    ids=["skops-cannot-dump", "skops-cannot-load"],
)
def test_sklearn_falls_back_to_joblib_only_when_trusted(reg: Registry, extra: Any) -> None:
    X, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(X, y)
    clf.extra_ = extra  # an attribute of a type skops cannot handle

    with pytest.raises(FlavorError, match=r"skops cannot save this model.*trusted=True"):
        reg.register("odd", clf, sample_input=X[:5])
    assert reg.list_models() == []

    mv = reg.register("odd", clf, sample_input=X[:5], trusted=True)
    assert mv.options["format"] == "joblib"
    reg.set_alias("odd", "production", mv.version)
    with pytest.raises(FlavorError, match=r"pickle \(joblib\).*trusted=True"):
        reg.load("odd@production")
    model = reg.load("odd@production", trusted=True)
    np.testing.assert_array_equal(model.predict(X), clf.predict(X))


def test_sklearn_without_predict_is_a_flavor_error(reg: Registry) -> None:
    X, _ = load_iris(return_X_y=True)
    scaler = StandardScaler().fit(X)
    with pytest.raises(FlavorError, match="fails on its own sample_input"):
        reg.register("scaler", scaler, sample_input=X[:5], flavor="sklearn")


def test_allow_nan_is_chosen_per_model(reg: Registry) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    X[::7, 1] = np.nan  # HistGradientBoosting learns from missing values
    y = (np.nan_to_num(X[:, 0]) > 0).astype(int)
    clf = HistGradientBoostingClassifier(max_iter=5).fit(X, y)

    with pytest.raises(InvalidInput, match=r"input 'input': null/NaN at row 0"):
        reg.register("gaps", clf, sample_input=X[:10])
    strict = round_trip(reg, "gaps", clf, X[1:7])
    with pytest.raises(InvalidInput, match="rejects NaN/inf"):
        strict.predict(X[:10])

    lenient = round_trip(reg, "gaps-ok", clf, X[:10], allow_nan=True)
    assert lenient.signature.allow_nan
    np.testing.assert_array_equal(lenient.predict(X), clf.predict(X))
    rows = [[None if np.isnan(v) else v for v in row] for row in X[:14].tolist()]
    np.testing.assert_array_equal(lenient.predict(rows), clf.predict(X[:14]))


# --- onnx -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_model(pipeline: Pipeline, cancer: tuple[pd.DataFrame, pd.Series]) -> Any:
    from skl2onnx import to_onnx

    X = cancer[0].to_numpy(dtype=np.float32)
    # the pipeline was fitted on a DataFrame: convert a copy fitted on its numbers
    plain = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    plain.set_params(**pipeline.get_params())
    plain.fit(cancer[0].to_numpy(), cancer[1])
    return plain, to_onnx(plain, X[:1], options={id(plain): {"zipmap": False}})


@pytest.mark.parametrize("form", ["proto", "bytes"])
def test_onnx_round_trip(
    reg: Registry, onnx_model: Any, cancer: tuple[pd.DataFrame, pd.Series], form: str
) -> None:
    sk, proto = onnx_model
    X = cancer[0].to_numpy()
    obj = proto if form == "proto" else proto.SerializeToString()
    model = round_trip(reg, "cancer-onnx", obj, X[:5])

    assert model.record.flavor == "onnx"
    assert [o.name for o in model.signature.outputs] == ["label", "probabilities"]
    # the graph computes in float32: labels agree, probabilities to float32 precision
    np.testing.assert_array_equal(model.predict(X), sk.predict(X))
    np.testing.assert_allclose(
        model.predict(X, output="probabilities"), sk.predict_proba(X), atol=1e-5
    )


def test_onnx_from_a_dataframe_sample_and_a_file(
    reg: Registry, onnx_model: Any, cancer: tuple[pd.DataFrame, pd.Series], tmp_path: Path
) -> None:
    sk, proto = onnx_model
    X = cancer[0]
    path = tmp_path / "cancer.onnx"
    path.write_bytes(proto.SerializeToString())
    assert infer_flavor(str(path)) == "onnx"

    model = round_trip(reg, "cancer-onnx", path, X.head(5))
    assert model.signature.layout == "columns"
    np.testing.assert_array_equal(model.predict(X), sk.predict(X.to_numpy()))


def test_onnx_bytes_that_are_not_a_model(reg: Registry) -> None:
    with pytest.raises(FlavorError, match="onnxruntime cannot load"):
        reg.register("junk", b"definitely not onnx", sample_input=np.zeros((2, 3)))


# --- lightgbm -------------------------------------------------------------------------


def test_lightgbm_classifier(reg: Registry, cancer: tuple[pd.DataFrame, pd.Series]) -> None:
    import lightgbm as lgb

    X, y = cancer
    clf = lgb.LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1, n_jobs=1).fit(X, y)
    model = round_trip(reg, "cancer-lgb", clf, X.head(5))

    assert model.record.flavor == "lightgbm"
    np.testing.assert_array_equal(model.predict(X), clf.predict(X))
    np.testing.assert_allclose(model.predict(X, output="probabilities"), clf.predict_proba(X))


def test_lightgbm_multiclass_with_string_labels(reg: Registry) -> None:
    import lightgbm as lgb

    X, y = load_iris(return_X_y=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = lgb.LGBMClassifier(n_estimators=10, min_child_samples=5, verbose=-1, n_jobs=1)
    clf.fit(X, labels)
    model = round_trip(reg, "iris-lgb", clf, X[:5])

    assert model.signature.outputs[0].describe() == "predictions: BYTES"
    np.testing.assert_array_equal(model.predict(X), clf.predict(X))


def test_lightgbm_booster(reg: Registry, diabetes: tuple[np.ndarray, np.ndarray]) -> None:
    import lightgbm as lgb

    X, y = diabetes
    booster = lgb.train(
        {"objective": "regression", "num_leaves": 8, "verbose": -1, "num_threads": 1},
        lgb.Dataset(X, y), num_boost_round=20,
    )
    model = round_trip(reg, "diabetes-lgb", booster, X[:5])

    assert model.record.options["classes"] is None
    np.testing.assert_allclose(model.predict(X), booster.predict(X))


def test_lightgbm_unfitted_is_a_flavor_error(reg: Registry) -> None:
    import lightgbm as lgb

    with pytest.raises(FlavorError, match="not fitted"):
        reg.register("nothing", lgb.LGBMClassifier(), sample_input=np.zeros((2, 3)))


# --- xgboost --------------------------------------------------------------------------


def test_xgboost_classifier(reg: Registry, cancer: tuple[pd.DataFrame, pd.Series]) -> None:
    import xgboost as xgb

    X, y = cancer
    clf = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(X, y)
    model = round_trip(reg, "cancer-xgb", clf, X.head(5))

    assert model.record.flavor == "xgboost"
    np.testing.assert_array_equal(model.predict(X), clf.predict(X))
    np.testing.assert_allclose(model.predict(X, output="probabilities"), clf.predict_proba(X))


def test_xgboost_regressor(reg: Registry, diabetes: tuple[np.ndarray, np.ndarray]) -> None:
    import xgboost as xgb

    X, y = diabetes
    regressor = xgb.XGBRegressor(n_estimators=20, max_depth=3).fit(X, y)
    model = round_trip(reg, "diabetes-xgb", regressor, X[:5])

    np.testing.assert_allclose(model.predict(X), regressor.predict(X), rtol=1e-6)


def test_xgboost_early_stopping_predicts_with_the_best_iteration(
    reg: Registry, cancer: tuple[pd.DataFrame, pd.Series]
) -> None:
    import xgboost as xgb

    X, y = cancer[0].to_numpy(), cancer[1].to_numpy()
    clf = xgb.XGBClassifier(n_estimators=200, learning_rate=0.5, early_stopping_rounds=3)
    clf.fit(X[:400], y[:400], eval_set=[(X[400:], y[400:])], verbose=False)
    assert clf.best_iteration + 1 < clf.get_booster().num_boosted_rounds()
    model = round_trip(reg, "early", clf, X[:5])

    np.testing.assert_allclose(model.predict(X, output="probabilities"), clf.predict_proba(X))


def test_xgboost_softmax_answers_labels(reg: Registry) -> None:
    import xgboost as xgb

    X, y = load_iris(return_X_y=True)
    clf = xgb.XGBClassifier(n_estimators=5, objective="multi:softmax").fit(X, y)
    model = round_trip(reg, "iris-xgb", clf, X[:5])

    np.testing.assert_array_equal(model.predict(X), clf.predict(X))


def test_xgboost_booster(reg: Registry, diabetes: tuple[np.ndarray, np.ndarray]) -> None:
    import xgboost as xgb

    X, y = diabetes
    booster = xgb.train({"max_depth": 3}, xgb.DMatrix(X, y), num_boost_round=10)
    model = round_trip(reg, "diabetes-xgb-booster", booster, X[:5])

    np.testing.assert_allclose(model.predict(X), booster.predict(xgb.DMatrix(X)), rtol=1e-6)


# --- python ---------------------------------------------------------------------------

SCORER = '''
import numpy as np

VERSION = {version}


class Scorer:
    """A linear scorer whose weights live in a file."""

    files = {{"weights": {weights!r}}}

    def load(self, files):
        self.w = np.load(files["weights"])

    def predict(self, x):
        return np.asarray(x) @ self.w + VERSION
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Write `scorer_mod.py` (and its weights) into a folder on sys.path; import it."""

    def write(version: int) -> Any:
        folder = tmp_path / f"user{version}"
        folder.mkdir()
        weights = folder / "weights.npy"
        np.save(weights, np.array([1.0, 2.0, 3.0]) * version)
        (folder / "scorer_mod.py").write_text(
            textwrap.dedent(SCORER.format(version=version, weights=str(weights)))
        )
        monkeypatch.syspath_prepend(str(folder))
        sys.modules.pop("scorer_mod", None)
        import scorer_mod

        obj = scorer_mod.Scorer()
        obj.load({"weights": weights})
        return obj, folder

    yield write
    for name in [m for m in sys.modules if m == "scorer_mod"]:
        del sys.modules[name]


def _forget(folder: Path) -> None:
    """Remove every trace of the user's module: sys.path, sys.modules, its files."""
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    sys.modules.pop("scorer_mod", None)
    for file in folder.iterdir():
        file.unlink()


def test_python_model_loads_from_its_packaged_code(reg: Registry, user_module: Any) -> None:
    scorer, folder = user_module(1)
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    expected = scorer.predict(X)

    mv = reg.register("scorer", scorer, sample_input=X)
    assert mv.flavor == "python"
    assert mv.options["class"] == "scorer_mod:Scorer"
    assert mv.options["files"] == {"weights": "files/weights/weights.npy"}
    reg.set_alias("scorer", "production", mv.version)
    _forget(folder)

    with pytest.raises(FlavorError, match="trusted=True"):
        reg.load("scorer@production")
    model = reg.load("scorer@production", trusted=True)
    np.testing.assert_allclose(model.predict(X), expected)
    assert not (reg.cache_dir / mv.sha256 / "code" / "__pycache__").exists()


def test_two_versions_of_one_python_model_each_run_their_own_code(
    reg: Registry, user_module: Any
) -> None:
    X = np.ones((2, 3))
    v1, folder1 = user_module(1)
    reg.register("scorer", v1, sample_input=X)
    first = reg.load("scorer:1", trusted=True)
    _forget(folder1)
    v2, _ = user_module(2)
    reg.register("scorer", v2, sample_input=X)
    second = reg.load("scorer:2", trusted=True)

    np.testing.assert_allclose(first.predict(X), X @ [1.0, 2.0, 3.0] + 1)
    np.testing.assert_allclose(second.predict(X), X @ [2.0, 4.0, 6.0] + 2)
    # registering and loading left the user's own module in place
    assert sys.modules["scorer_mod"].Scorer is type(v2)


class _Local:
    def predict(self, x: Any) -> Any:
        return x


def test_python_model_must_be_importable(reg: Registry) -> None:
    class Inner:
        def predict(self, x: Any) -> Any:
            return x

    with pytest.raises(FlavorError, match="must be importable"):
        reg.register("inner", Inner(), sample_input=np.ones((2, 2)))


def test_python_model_file_keys_are_folder_names(reg: Registry, tmp_path: Path) -> None:
    model = _Local()
    model.files = {"../escape": str(tmp_path)}  # type: ignore[attr-defined]
    with pytest.raises(FlavorError, match="names a folder"):
        reg.register("local", model, sample_input=np.ones((2, 2)))


# --- model files a user already has (`modelport models register FILE`) ---------------


def test_read_sklearn_files_honours_trust(tmp_path: Path) -> None:
    import joblib
    import skops.io as sio

    X, y = load_digits(return_X_y=True)
    clf = HistGradientBoostingClassifier(max_iter=2).fit(X[:200], y[:200])
    sio.dump(clf, tmp_path / "m.skops")
    joblib.dump(clf, tmp_path / "m.joblib")

    with pytest.raises(FlavorError, match="types skops does not trust by default"):
        SklearnFlavor.read_file(tmp_path / "m.skops")
    with pytest.raises(FlavorError, match="run code when read"):
        SklearnFlavor.read_file(tmp_path / "m.joblib")
    for name in ("m.skops", "m.joblib"):
        read = SklearnFlavor.read_file(tmp_path / name, trusted=True)
        np.testing.assert_array_equal(read.predict(X), clf.predict(X))


def test_read_booster_and_onnx_files(
    tmp_path: Path, diabetes: tuple[np.ndarray, np.ndarray], onnx_model: Any
) -> None:
    import lightgbm as lgb
    import xgboost as xgb

    X, y = diabetes
    params = {"verbose": -1, "num_threads": 1}
    lgb.train(params, lgb.Dataset(X, y), num_boost_round=2).save_model(str(tmp_path / "m.txt"))
    xgb.train({}, xgb.DMatrix(X, y), num_boost_round=2).save_model(str(tmp_path / "m.ubj"))
    (tmp_path / "m.onnx").write_bytes(onnx_model[1].SerializeToString())

    assert isinstance(get_flavor("lightgbm").read_file(tmp_path / "m.txt"), lgb.Booster)
    assert isinstance(get_flavor("xgboost").read_file(tmp_path / "m.ubj"), xgb.Booster)
    assert get_flavor("onnx").read_file(tmp_path / "m.onnx") == onnx_model[1].SerializeToString()
    with pytest.raises(FlavorError, match="registered from Python"):
        get_flavor("python").read_file(tmp_path / "m.txt")


# --- choosing a flavor ----------------------------------------------------------------


def _objects() -> list[tuple[str, Any]]:
    import lightgbm as lgb
    import xgboost as xgb
    from skl2onnx import to_onnx

    X, y = load_iris(return_X_y=True)
    lr = LogisticRegression(max_iter=500).fit(X, y)
    proto = to_onnx(lr, X[:1].astype(np.float32))
    return [
        ("sklearn", lr),
        ("sklearn", make_pipeline(StandardScaler(), LogisticRegression())),
        ("sklearn", HistGradientBoostingClassifier()),
        ("lightgbm", lgb.LGBMClassifier()),
        ("lightgbm", lgb.train({"verbose": -1, "num_threads": 1}, lgb.Dataset(X, y), 1)),
        ("xgboost", xgb.XGBRegressor()),
        ("xgboost", xgb.train({}, xgb.DMatrix(X, y), num_boost_round=1)),
        ("onnx", proto),
        ("onnx", proto.SerializeToString()),
        ("onnx", Path("model.onnx")),
        ("python", _Local()),
    ]


def test_infer_flavor_picks_the_flavor_for_each_object() -> None:
    for expected, obj in _objects():
        assert infer_flavor(obj) == expected, type(obj)


def test_infer_flavor_without_a_fit() -> None:
    with pytest.raises(FlavorError, match=r"no flavor for a builtins\.object"):
        infer_flavor(object())


def test_unknown_flavor_name() -> None:
    with pytest.raises(FlavorError, match="unknown flavor 'torchx'"):
        get_flavor("torchx")


def test_a_missing_library_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)  # as if it were not installed
    with pytest.raises(FlavorError, match=r"needs xgboost: pip install 'modelport\[xgboost\]'"):
        get_flavor("xgboost")(tmp_path, {}).load()


def test_import_modelport_loads_no_ml_library() -> None:
    code = (
        "import sys, modelport, modelport.flavors\n"
        "heavy = ['sklearn', 'skops', 'onnx', 'onnxruntime', 'lightgbm', 'xgboost', 'joblib',"
        " 'pandas']\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
