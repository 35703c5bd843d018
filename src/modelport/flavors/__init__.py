"""Flavors: how an artifact becomes a callable model, one module per kind of model.

Implementations are named here by import path and imported only when chosen, so that
onnxruntime, lightgbm or xgboost load only for the models that need them.
"""

from __future__ import annotations

import importlib
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from modelport.errors import FlavorError
from modelport.flavors.base import Flavor

if TYPE_CHECKING:
    from modelport.flavors.factors import FactorModel

FLAVORS: dict[str, str] = {
    "sklearn": "modelport.flavors.sklearn:SklearnFlavor",
    "onnx": "modelport.flavors.onnx:OnnxFlavor",
    "lightgbm": "modelport.flavors.lightgbm:LightGBMFlavor",
    "xgboost": "modelport.flavors.xgboost:XGBoostFlavor",
    "python": "modelport.flavors.python:PythonFlavor",
    "factors": "modelport.flavors.factors:FactorsFlavor",
}

# Top-level package of an object's class (or a base class) → flavor; checked in order,
# so a LightGBM estimator (also a scikit-learn estimator) is saved natively.
_BY_PACKAGE = (("lightgbm", "lightgbm"), ("xgboost", "xgboost"), ("onnx", "onnx"),
               ("sklearn", "sklearn"))


def get_flavor(name: str) -> type[Flavor]:
    try:
        target = FLAVORS[name]
    except KeyError:
        raise FlavorError(f"unknown flavor {name!r}; known: {', '.join(FLAVORS)}") from None
    module, _, attr = target.partition(":")
    try:
        cls: type[Flavor] = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise FlavorError(
            f"flavor {name!r} needs an optional dependency: pip install 'modelport[{name}]' "
            f"({exc})"
        ) from exc
    return cls


def infer_flavor(obj: Any) -> str:
    """Pick the flavor for a model object without importing any ML library."""
    if type(obj).__module__ == "modelport.flavors.factors":
        return "factors"
    packages = [c.__module__.partition(".")[0] for c in type(obj).__mro__]
    for package, flavor in _BY_PACKAGE:
        if package in packages:
            return flavor
    # serialized ONNX, or a path to it: the only flavor that takes bytes or a file
    if isinstance(obj, bytes | bytearray) or (
        isinstance(obj, str | PurePath) and str(obj).lower().endswith(".onnx")
    ):
        return "onnx"
    if callable(getattr(obj, "predict", None)):
        return "python"
    raise FlavorError(
        f"no flavor for a {type(obj).__module__}.{type(obj).__qualname__}: pass flavor=... "
        f"or give the object a predict() method"
    )


def __getattr__(name: str) -> Any:
    if name == "FactorModel":  # loads numpy's factor code only when asked for
        from modelport.flavors.factors import FactorModel

        return FactorModel
    raise AttributeError(f"module 'modelport.flavors' has no attribute {name!r}")


__all__ = ["FLAVORS", "FactorModel", "Flavor", "get_flavor", "infer_flavor"]
