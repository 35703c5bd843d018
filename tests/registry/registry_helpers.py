"""Small models and helpers shared by the registry tests.

The models are plain Python (the `python` flavor): cheap to save and load, and their
artifacts are byte-for-byte reproducible (the module's source, plus any declared
files), so registering the same thing twice stores one blob; `weighted` models with
different weights have different blobs. They live
in a module of their own so that spawned worker processes can import them.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import numpy as np

from modelport import Registry, Settings


class Doubler:
    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64).sum(axis=1) * 2


class Tripler:
    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64).sum(axis=1) * 3


class Weighted:
    """Rows times a weight vector read from a file: the file makes each artifact unique."""

    def __init__(self, weights: Path | None = None) -> None:
        if weights is not None:
            self.files = {"weights": str(weights)}

    def load(self, files: dict[str, Path]) -> None:
        self.w = np.load(files["weights"])

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.w


def weighted(folder: Path, *weights: float) -> Weighted:
    """A Weighted model over `weights`, its file written in `folder`."""
    path = folder / f"weights-{'_'.join(map(str, weights))}.npy"
    np.save(path, np.asarray(weights, dtype=np.float64))
    return Weighted(path)


class RowCounter:
    """Takes a DataFrame (for signatures of named, mixed-type columns)."""

    def predict(self, frame: Any) -> np.ndarray:
        return np.arange(len(frame), dtype=np.int64)


X = np.arange(12, dtype=np.float64).reshape(4, 3)


def register(reg: Registry, name: str, model: Any = None, **kw: Any) -> int:
    """Register a python-flavor model; returns the version number."""
    return reg.register(name, model or Doubler(), sample_input=X, **kw).version


def blob(reg: Registry, sha256: str) -> Path:
    """Where the local artifact store keeps a blob (its documented layout)."""
    return Path(reg.artifacts.url) / "sha256" / sha256[:2] / sha256


def concurrent_worker(url: str, home: str, barrier: Any, results: Any, count: int) -> None:
    """One process of the concurrency test (here, not in the test module, so that a
    spawned process imports only this module and modelport, not pytest)."""
    try:
        with Registry(url=url, settings=Settings(home=Path(home))) as reg:
            barrier.wait(timeout=60)
            mine = []
            for _ in range(count):
                version = register(reg, "shared")
                reg.set_alias("shared", "production", version)
                mine.append(version)
        results.put(("ok", mine))
    except BaseException:
        results.put(("error", traceback.format_exc()))
