"""The small model most tests serve: breast-cancer features and a scaled logistic
regression, fitted once per test process (tests/ is on sys.path through conftest)."""

from __future__ import annotations

import functools
from typing import Any

from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@functools.cache
def cancer() -> tuple[Any, Any]:
    """(features as a DataFrame, the fitted StandardScaler + LogisticRegression)."""
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return X, make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)


class DropsFirstRow:
    """Twice each row's sum, but one row short for any batch of more than one (the first
    row is lost): a model whose answers cannot be matched to its rows. Its `gate` and
    `entered` work as `Gated`'s, so a test can queue requests behind a call."""

    import threading

    gate = threading.Event()
    gate.set()
    entered = threading.Event()

    def predict(self, x: Any) -> Any:
        import numpy as np

        type(self).entered.set()
        assert type(self).gate.wait(60), "the test never opened the gate"
        out = np.asarray(x, dtype=np.float64).sum(axis=1) * 2
        return out[1:] if len(out) > 1 else out


class Gated:
    """Twice each row's sum, once its class's `gate` is open: a model call that waits
    for the test, so a queue can be filled behind it without timing. (A loaded python
    model is a class of its own copy of this module: close the gate of the instance the
    server loaded.)"""

    import threading

    gate = threading.Event()
    gate.set()
    entered = threading.Event()
    """Set when a call has begun."""

    def predict(self, x: Any) -> Any:
        import numpy as np

        type(self).entered.set()
        assert type(self).gate.wait(60), "the test never opened the gate"
        return np.asarray(x, dtype=np.float64).sum(axis=1) * 2


def waits_per_row(x: Any) -> Any:
    """`x` after 30 µs per row: cheap at one row, over a millisecond at 64 (a step of
    a scikit-learn pipeline whose cost grows with the batch)."""
    import time

    time.sleep(30e-6 * len(x))
    return x
