"""A scikit-learn model registered with a DataFrame of numbers is handed the array of
its values when it reads both alike: the same answers, without the DataFrame's cost
and without scikit-learn's warning about an array lacking column names.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    VotingClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from modelport import Model, Registry, Settings


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, pd.Series]:
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return X, y


@pytest.fixture
def reg(settings: Settings) -> Iterator[Registry]:
    registry = Registry(settings=settings)
    yield registry
    registry.close()


def scaled() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


ALIKE = {
    "pipeline": scaled,
    "hist-gradient-boosting": lambda: HistGradientBoostingClassifier(max_iter=10),
    "random-forest": lambda: RandomForestClassifier(n_estimators=5, random_state=0),
    "voting": lambda: VotingClassifier(
        [("lr", scaled()), ("hgb", HistGradientBoostingClassifier(max_iter=10))],
        voting="soft"),
    "calibrated": lambda: CalibratedClassifierCV(scaled(), cv=3),
}

BY_NAME = {
    # selects columns by their names: an array has none
    "column-transformer": lambda: make_pipeline(
        ColumnTransformer([("scale", StandardScaler(), ["mean radius", "mean texture"])],
                          remainder="passthrough"),
        LogisticRegression(max_iter=5000)),
    # runs a function of the user's, which may read the DataFrame
    "function-transformer": lambda: make_pipeline(
        FunctionTransformer(np.log1p), LogisticRegression(max_iter=5000)),
}


def load(reg: Registry, fitted: Any, X: pd.DataFrame) -> tuple[Model, list[type]]:
    """Register and load `fitted`, noting the type each flavor call is handed."""
    mv = reg.register("cancer", fitted, sample_input=X.head(5))
    model = reg.load(f"cancer:{mv.version}")
    handed: list[type] = []
    predict = model.flavor.predict

    def spy(x: Any) -> Any:
        handed.append(type(x))
        return predict(x)

    model.flavor.predict = spy  # type: ignore[method-assign]
    return model, handed


@pytest.mark.parametrize("make", ALIKE.values(), ids=ALIKE.keys())
def test_a_model_of_scikit_learns_own_is_handed_an_array(
    reg: Registry, cancer: tuple[pd.DataFrame, pd.Series], make: Any
) -> None:
    X, y = cancer
    fitted = make().fit(X, y)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        model, handed = load(reg, fitted, X)
        labels = model.predict(X)
        probabilities = model.predict(X.to_dict(orient="records"), output="probabilities")
        assert warnings.filters == filters  # no filter of the process's changed

    assert handed == [np.ndarray, np.ndarray]
    np.testing.assert_array_equal(labels, fitted.predict(X))
    np.testing.assert_allclose(probabilities, fitted.predict_proba(X), rtol=1e-12, atol=1e-15)
    assert not [w for w in seen if "feature names" in str(w.message)], \
        [str(w.message) for w in seen]


@pytest.mark.parametrize("make", BY_NAME.values(), ids=BY_NAME.keys())
def test_a_model_that_may_read_the_dataframe_is_handed_one(
    reg: Registry, cancer: tuple[pd.DataFrame, pd.Series], make: Any
) -> None:
    X, y = cancer
    fitted = make().fit(X, y)
    model, handed = load(reg, fitted, X)

    np.testing.assert_array_equal(model.predict(X), fitted.predict(X))
    assert handed == [pd.DataFrame]


def test_columns_of_several_types_are_handed_a_dataframe(
    reg: Registry, cancer: tuple[pd.DataFrame, pd.Series]
) -> None:
    X, y = cancer
    X = X.assign(**{"mean radius": (X["mean radius"] * 100).round().astype("int64")})
    fitted = scaled().fit(X, y)
    model, handed = load(reg, fitted, X)

    np.testing.assert_array_equal(model.predict(X), fitted.predict(X))
    assert handed == [pd.DataFrame]


def test_the_model_still_checks_how_many_columns_it_is_handed(
    reg: Registry, cancer: tuple[pd.DataFrame, pd.Series]
) -> None:
    # the names were checked at load; the count is still scikit-learn's to check
    X, y = cancer
    model, handed = load(reg, scaled().fit(X, y), X)
    with pytest.raises(ValueError, match="features"):
        model.flavor.predict(X.to_numpy()[:, :5])
    assert handed == [np.ndarray]
