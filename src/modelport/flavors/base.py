"""The contract every flavor implements."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
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

    def __init__(self, path: Path, options: dict[str, Any], *, trusted: bool = False) -> None:
        self.path = path
        self.options = options
        self.trusted = trusted
        self.inputs_finite = False
        """Whether every input `predict` gets has been checked for NaN and infinities
        (the signature refuses them; `Model.load` says so): a flavor may then skip its
        library's own check."""

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

    def takes_arrays(self, columns: list[str]) -> bool:
        """Whether the loaded model, registered with a DataFrame of these numeric
        columns, answers the same for the array of their values in this order. Making
        and checking a DataFrame costs some models more than the prediction itself."""
        return False


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
