"""scikit-learn estimators and pipelines, saved with skops (safe) or joblib (trusted)."""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import FlavorError
from modelport.flavors.base import Flavor, Inputs, require

ARGMAX_OF_PROBA = frozenset({
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.ensemble._bagging.BaggingClassifier",
    "sklearn.calibration.CalibratedClassifierCV",
})
"""Classifiers whose `predict()` is `classes_[argmax(predict_proba())]`, in
scikit-learn's own code: their labels come from the probabilities, which they compute
once instead of twice (a forest walks all its trees for each). Exact classes only: a
subclass may predict otherwise."""

ARGMAX_OF_SCORES = frozenset({
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting."
    "HistGradientBoostingClassifier",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.tree._classes.DecisionTreeClassifier",
})
"""Classifiers whose `predict()` is the argmax of scores (raw boosting sums, decision
values, leaf counts) that `predict_proba()` maps to probabilities keeping their order
(sigmoid, softmax, dividing by the total). Asked for both, they too answer the label
of the highest probability, from one pass. That is their own label except where two
probabilities are equal in floating point, a tie that their raw scores may still
break (scores nearer than the map can tell apart, a binary score so near 0 that its
sigmoid rounds to 0.5): a tie goes to the first of the tied classes in `classes_`
order, as numpy's argmax and scikit-learn's forests break it."""

PREDICTIONS, PROBABILITIES = "predictions", "probabilities"


class SklearnFlavor(Flavor):
    """Classifiers answer `predictions` (labels) and `probabilities`; others `predictions`.

    skops reads only the types it is told to trust; the types a model needs beyond
    skops' defaults are recorded when it is registered (its owner vouches for them) and
    nothing else is accepted at load. Pickle (joblib) runs arbitrary code on load, so it
    is used only when skops cannot round-trip the model and both the registering and
    the loading side say `trusted=True`.
    """

    name = "sklearn"
    _fast: _FastPath | None = None
    """How the loaded model predicts: decided once, by `prepare`."""

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
        self._fast = None
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

    def prepare(self, inputs: Inputs) -> bool:
        self._fast = _FastPath.plan(self.model, inputs, bool(self.options.get("proba")))
        return self._fast.arrays

    def predict(self, x: Any) -> Any:
        return self.predict_only(x, _BOTH)

    def predict_only(self, x: Any, outputs: AbstractSet[str]) -> Any:
        fast = self._fast
        if fast is None:  # not prepared: no guarantee about the inputs
            fast = self._fast = _FastPath.plan(self.model, Inputs(finite=False),
                                               bool(self.options.get("proba")))
        if not fast.finite:
            return fast.predict(x, outputs)
        import sklearn

        # the signature has refused NaN and infinities already: scikit-learn's own check
        # of every array each estimator is handed would only repeat it
        with sklearn.config_context(assume_finite=True):
            return fast.predict(x, outputs)


_BOTH = frozenset({PREDICTIONS, PROBABILITIES})


@dataclass(frozen=True)
class _FastPath:
    """How a loaded model predicts, decided once from the model and what its inputs are
    known to be (`Flavor.prepare`)."""

    model: Any
    proba: bool
    """Whether it answers probabilities too (a classifier)."""
    finite: bool
    """Whether scikit-learn may skip its NaN check (`Inputs.finite`)."""
    arrays: bool
    """Whether it is handed arrays for DataFrames of numbers (`_reads_arrays_alike`)."""
    transforms: tuple[Any, ...]
    """A pipeline's steps before its last, applied here once for both outputs."""
    final: Any
    """What `predict_proba` is called on: the model, or the pipeline's last step."""
    argmax: bool
    """Whether labels are `classes_[argmax(predict_proba())]` when both are asked
    (ARGMAX_OF_PROBA, ARGMAX_OF_SCORES)."""

    @classmethod
    def plan(cls, model: Any, inputs: Inputs, proba: bool) -> _FastPath:
        columns = inputs.numeric_columns
        arrays = columns is not None and _takes_arrays(model, list(columns))
        if arrays:
            # scikit-learn checks an input's column names against those it was fitted
            # with, and warns at each call that an array has none: they are checked
            # here, once, and the estimators' copy of them goes
            _forget_feature_names(model)
        transforms: tuple[Any, ...] = ()
        final = model
        steps = getattr(model, "steps", None)
        if proba and _is_pipeline(model) and steps and len(steps) > 1:
            # the pipeline's transforms once for both calls, as Pipeline.predict and
            # predict_proba each apply them before its final step (and step by step:
            # slicing the pipeline makes a new one per call, and routes no parameters)
            transforms = tuple(step for _, step in steps[:-1]
                               if step is not None and step != "passthrough")
            final = steps[-1][1]
        argmax = _qualname(final) in ARGMAX_OF_PROBA | ARGMAX_OF_SCORES \
            and getattr(final, "n_outputs_", 1) == 1
        return cls(model, proba, inputs.finite, arrays, transforms, final, argmax)

    def predict(self, x: Any, outputs: AbstractSet[str]) -> dict[str, Any]:
        """What is asked of `outputs`, each computed only if asked."""
        if not self.proba or PROBABILITIES not in outputs:
            return {PREDICTIONS: self.model.predict(x)}
        for step in self.transforms:
            x = step.transform(x)
        probabilities = self.final.predict_proba(x)
        if PREDICTIONS not in outputs:
            return {PROBABILITIES: probabilities}
        if self.argmax:
            # its predict() is an argmax that this argmax of predict_proba() matches
            # (ARGMAX_OF_PROBA, ARGMAX_OF_SCORES): one pass over the model, not two
            labels = self.final.classes_.take(np.argmax(probabilities, axis=1), axis=0)
            return {PREDICTIONS: labels, PROBABILITIES: probabilities}
        # two calls: argmax(proba) differs from predict for other estimators (SVC)
        return {PREDICTIONS: self.final.predict(x), PROBABILITIES: probabilities}


def _takes_arrays(model: Any, columns: list[str]) -> bool:
    """Whether `model`, registered with a DataFrame of these numeric columns, answers
    the same for the array of their values in this order."""
    fitted = getattr(model, "feature_names_in_", None)
    if fitted is not None and [str(n) for n in fitted] != columns:
        return False  # fitted on other columns, or in another order: its check says so
    return _reads_arrays_alike(model)


def _forget_feature_names(model: Any) -> None:
    for obj in _parts(model):
        if "feature_names_in_" in getattr(obj, "__dict__", {}):
            del obj.feature_names_in_


def _reads_arrays_alike(model: Any) -> bool:
    """Whether `model`, and every estimator it holds (pipeline steps, an ensemble's
    members, fitted or not), is scikit-learn's own, which turns a DataFrame of numbers
    into the array of its values before anything else. Not: column selection by name
    (`sklearn.compose`), user code (`FunctionTransformer`, classes from elsewhere), or
    categories read from the DataFrame's dtypes (`is_categorical_`)."""
    for obj in _parts(model):
        if not _ours(obj):
            if hasattr(obj, "fit") or hasattr(obj, "predict") or hasattr(obj, "transform"):
                return False  # someone else's estimator: how it reads a DataFrame is its own
            continue
        if type(obj).__module__.startswith("sklearn.compose") \
                or type(obj).__name__ == "FunctionTransformer":
            return False
        categorical = getattr(obj, "is_categorical_", None)
        if categorical is not None and bool(np.any(categorical)):
            return False
    return True


def _parts(model: Any) -> Iterator[Any]:
    """`model` and every object it holds, through lists, tuples, dicts and the
    attributes of scikit-learn's own objects (others are not looked into)."""
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
        yield obj
        if _ours(obj) and hasattr(obj, "__dict__"):
            todo += [v for v in vars(obj).values() if _may_hold_estimators(v)]


def _ours(obj: Any) -> bool:
    module = type(obj).__module__
    return module == "sklearn" or module.startswith("sklearn.")


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
