"""scikit-learn estimators and pipelines, saved with skops (safe) or joblib (trusted)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import FlavorError
from modelport.flavors.base import Flavor, require

ARGMAX_OF_PROBA = frozenset({
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.calibration.CalibratedClassifierCV",
})
"""Classifiers whose `predict()` is `classes_[argmax(predict_proba())]`, in
scikit-learn's own code: their labels come from the probabilities, which they compute
once instead of twice (a forest walks all its trees for each). Exact classes only: a
subclass may predict otherwise."""


class SklearnFlavor(Flavor):
    """Classifiers answer `predictions` (labels) and `probabilities`; others `predictions`.

    skops reads only the types it is told to trust; the types a model needs beyond
    skops' defaults are recorded when it is registered (its owner vouches for them) and
    nothing else is accepted at load. Pickle (joblib) runs arbitrary code on load, so it
    is used only when skops cannot round-trip the model and both the registering and
    the loading side say `trusted=True`.
    """

    name = "sklearn"

    @classmethod
    def save(cls, obj: Any, path: Path, *, trusted: bool = False) -> dict[str, Any]:
        sio = require("skops.io", "sklearn")

        file = path / "model.skops"
        try:
            sio.dump(obj, file)
            untrusted = sio.get_untrusted_types(file=file)
            # some objects dump but do not load back (a compiled regex, say): only a
            # load proves the artifact is usable
            sio.load(file, trusted=untrusted)
            return {"format": "skops", "trusted_types": sorted(untrusted), **_methods(obj)}
        except Exception as exc:
            file.unlink(missing_ok=True)
            if not trusted:
                raise FlavorError(
                    f"skops cannot save this model ({type(exc).__name__}: {exc}); pass "
                    "trusted=True to save it with joblib (pickle), which only trusted "
                    "loaders may read"
                ) from exc
        joblib = require("joblib", "sklearn")

        try:
            joblib.dump(obj, path / "model.joblib")
        except Exception as exc:
            raise FlavorError(f"neither skops nor joblib can save this model: {exc}") from exc
        return {"format": "joblib", **_methods(obj)}

    @classmethod
    def read_file(cls, path: Path, *, trusted: bool = False) -> Any:
        if path.suffix == ".skops":
            sio = require("skops.io", "sklearn")

            untrusted = sio.get_untrusted_types(file=path)
            if untrusted and not trusted:
                raise FlavorError(
                    f"{path.name} holds types skops does not trust by default: {untrusted}; "
                    "pass --trusted if you trust where it came from"
                )
            return _read(lambda: sio.load(path, trusted=untrusted))
        if not trusted:
            raise FlavorError(f"{path.name}: pickle/joblib files run code when read; "
                              "pass --trusted if you trust where it came from")
        joblib = require("joblib", "sklearn")

        return _read(lambda: joblib.load(path))

    def load(self) -> None:
        if self.options["format"] == "joblib":
            if not self.trusted:
                raise FlavorError(
                    "this version is a pickle (joblib) artifact; load it with trusted=True "
                    "only if you trust whoever registered it"
                )
            joblib = require("joblib", "sklearn")

            self.model = _read(lambda: joblib.load(self.path / "model.joblib"))
        else:
            sio = require("skops.io", "sklearn")

            file = self.path / "model.skops"
            trusted_types = self.options["trusted_types"]
            unknown = set(sio.get_untrusted_types(file=file)) - set(trusted_types)
            if unknown:
                raise FlavorError(f"artifact holds types nobody vouched for: {sorted(unknown)}")
            self.model = _read(lambda: sio.load(file, trusted=trusted_types))

    def predict(self, x: Any) -> Any:
        if not self.inputs_finite:
            return self._predict(x)
        import sklearn

        # the signature has refused NaN and infinities already: scikit-learn's own check
        # of every array each estimator is handed would only repeat it
        with sklearn.config_context(assume_finite=True):
            return self._predict(x)

    def _predict(self, x: Any) -> Any:
        if not self.options.get("proba"):
            return {"predictions": self.model.predict(x)}
        model = self.model
        steps = getattr(model, "steps", None)
        if _is_pipeline(model) and steps and len(steps) > 1:
            # the pipeline's transforms once for both calls, as Pipeline.predict and
            # predict_proba each apply them before its final step (and step by step:
            # slicing the pipeline makes a new one per call, and routes no parameters)
            for _, step in steps[:-1]:
                if step is not None and step != "passthrough":
                    x = step.transform(x)
            model = steps[-1][1]
        probabilities = model.predict_proba(x)
        if _qualname(model) in ARGMAX_OF_PROBA and getattr(model, "n_outputs_", 1) == 1:
            # its predict() is this very argmax of predict_proba(): one pass, not two
            labels = model.classes_.take(np.argmax(probabilities, axis=1), axis=0)
            return {"predictions": labels, "probabilities": probabilities}
        # two calls: argmax(proba) differs from predict for other estimators (SVC)
        return {"predictions": model.predict(x), "probabilities": probabilities}

    def takes_arrays(self, columns: list[str]) -> bool:
        fitted = getattr(self.model, "feature_names_in_", None)
        if fitted is not None and [str(n) for n in fitted] != columns:
            return False  # fitted on other columns, or in another order: its check says so
        if not _reads_arrays_alike(self.model):
            return False
        # scikit-learn warns at each call that an array has no column names; the
        # columns are in the fitted order, checked above, so the warning would be false
        warnings.filterwarnings("ignore", message="X does not have valid feature names",
                                category=UserWarning)
        return True


def _reads_arrays_alike(model: Any) -> bool:
    """Whether `model`, and every estimator it holds (pipeline steps, an ensemble's
    members, fitted or not), is scikit-learn's own, which turns a DataFrame of numbers
    into the array of its values before anything else. Not: column selection by name
    (`sklearn.compose`), user code (`FunctionTransformer`, classes from elsewhere), or
    categories read from the DataFrame's dtypes (`is_categorical_`)."""
    seen: set[int] = set()
    todo = [model]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, list | tuple):
            todo += obj
            continue
        if isinstance(obj, dict):
            todo += obj.values()
            continue
        module = type(obj).__module__
        ours = module == "sklearn" or module.startswith("sklearn.")
        if not ours:
            if hasattr(obj, "fit") or hasattr(obj, "predict") or hasattr(obj, "transform"):
                return False  # someone else's estimator: how it reads a DataFrame is its own
            continue
        if module.startswith("sklearn.compose") or type(obj).__name__ == "FunctionTransformer":
            return False
        categorical = getattr(obj, "is_categorical_", None)
        if categorical is not None and bool(np.any(categorical)):
            return False
        todo += [v for v in vars(obj).values() if _may_hold_estimators(v)] \
            if hasattr(obj, "__dict__") else []
    return True


def _may_hold_estimators(value: Any) -> bool:
    if isinstance(value, list | tuple | dict):
        return True
    return hasattr(value, "__dict__") and not isinstance(value, type)


def _qualname(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _is_pipeline(obj: Any) -> bool:
    from sklearn.pipeline import Pipeline

    return isinstance(obj, Pipeline)


def _methods(obj: Any) -> dict[str, Any]:
    return {"proba": hasattr(obj, "predict_proba") and hasattr(obj, "classes_")}


def _read(read: Any) -> Any:
    # a model whose classes are gone (a module not installed here) fails deep in the
    # unpickler; say so as a flavor error, not as a bare ImportError or AttributeError
    try:
        return read()
    except FlavorError:
        raise
    except Exception as exc:
        raise FlavorError(f"cannot read this scikit-learn model: {type(exc).__name__}: {exc}") \
            from exc
