"""The contract every flavor implements."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from modelport.errors import FlavorError


class Flavor(ABC):
    """Saves one kind of model object to a folder and loads it back as a predictor.

    Flavors are deliberately synchronous: `load` and `predict` are pure compute and I/O
    that `modelport.Model` runs off the event loop (in a thread, or a worker process
    for models that hold the GIL). Keeping them sync is what lets a worker process
    rebuild a flavor from its folder and options alone.
    """

    name: ClassVar[str]
    computes_only: ClassVar[bool] = True
    """`predict` only computes (it never waits on I/O, a lock or another service), so
    a call's time at load is its time later: `on_loop: auto` may place it on the event
    loop by that time (modelport.placement). False for code of the user's own."""

    def __init__(self, path: Path, options: dict[str, Any], *, trusted: bool = False) -> None:
        self.path = path
        self.options = options
        self.trusted = trusted

    @classmethod
    @abstractmethod
    def save(cls, obj: Any, path: Path, *, trusted: bool = False) -> dict[str, Any]:
        """Write `obj` into the empty folder `path`; return options `load` will need."""

    @classmethod
    def read_file(cls, path: Path, *, trusted: bool = False) -> Any:
        """Read a model object from a file a user already has (for `models register`)."""
        raise NotImplementedError(f"the {cls.name} flavor cannot read model files")

    @abstractmethod
    def load(self) -> None:
        """Read the model from `self.path` into memory."""

    @abstractmethod
    def predict(self, x: Any) -> Any:
        """Predict on a batch as the model object expects it (array, DataFrame, dict)."""

    def predict_only(self, x: Any, outputs: AbstractSet[str]) -> Any:
        """Predict only `outputs` (some of the signature's output names, never none):
        a flavor whose outputs cost separate passes over the model computes just those.
        Answers at least them; this default answers everything `predict` does."""
        return self.predict(x)

    def prepare(self, inputs: Inputs) -> bool:
        """Told once, after `load`, what every input `predict` gets will be: a flavor
        may then choose a faster way to predict. Answers whether `predict` takes the
        array of the values of a DataFrame of `inputs.numeric_columns` (in that order)
        instead of the DataFrame, answering the same; making and checking a DataFrame
        costs some models more than the prediction itself."""
        return False


@dataclass(frozen=True)
class Inputs:
    """What the signature guarantees of every input `predict` gets (`Flavor.prepare`)."""

    finite: bool
    """NaN and infinities are refused before the model sees them: a flavor may skip its
    library's own check."""
    numeric_columns: tuple[str, ...] | None = None
    """For a model registered with a DataFrame whose columns are all of one number
    type: their names, in order (one array holds them). None otherwise."""


def require(module: str, extra: str) -> Any:
    """Import a flavor's optional dependency, or say which extra installs it.

    Flavors import their libraries only when a model is saved or loaded, so a missing
    one shows up here, on first use, rather than at `import modelport`.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FlavorError(
            f"this model needs {module.partition('.')[0]}: pip install 'modelport[{extra}]' "
            f"({exc})"
        ) from exc
