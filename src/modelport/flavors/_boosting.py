"""What the gradient-boosting flavors (lightgbm, xgboost) share: answering like a
scikit-learn classifier from a booster's raw output."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelport.errors import FlavorError


def classes_of(obj: Any) -> list[Any] | None:
    """The class labels of a fitted classifier wrapper; None for anything else."""
    classes = getattr(obj, "classes_", None)
    return None if classes is None else np.asarray(classes).tolist()


def not_fitted(obj: Any, exc: Exception) -> FlavorError:
    return FlavorError(f"cannot save a {type(obj).__name__} that is not fitted: {exc}")


def answer(raw: np.ndarray, classes: np.ndarray | None) -> dict[str, np.ndarray]:
    """`predictions` for regressors and bare boosters; labels and `probabilities` for
    classifiers, with the labels picked as the wrappers' own predict() picks them."""
    if classes is None:
        return {"predictions": raw}
    if raw.ndim == 1 and len(classes) > 2:
        # a multi-class objective that answers class indices (multi:softmax)
        return {"predictions": classes[raw.astype(np.int64)]}
    proba = np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw
    return {"predictions": classes[np.argmax(proba, axis=1)], "probabilities": proba}
