"""Small python-flavor models for server tests (packaged with their artifacts)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


class Doubler:
    """Returns 2x, after `delay` seconds per call."""

    delay = 0.0

    def predict(self, x: Any) -> Any:
        if self.delay:
            time.sleep(self.delay)
        return np.asarray(x, dtype=np.float64).sum(axis=1) * 2


class SlowDoubler(Doubler):
    delay = 0.3


class Gated(Doubler):
    """Doubles once the file named by TOY_GATE exists (at once where it is unset): holds
    a request in flight until the test lets it go. Touches TOY_GATE.started on entry."""

    def predict(self, x: Any) -> Any:
        gate = os.environ.get("TOY_GATE")
        if gate:
            open(gate + ".started", "w").close()
        while gate and not os.path.exists(gate):
            time.sleep(0.01)
        return super().predict(x)


class NaNOut:
    def predict(self, x: Any) -> Any:
        out = np.asarray(x, dtype=np.float64).sum(axis=1)
        out[0] = np.nan
        return out


class BreaksOnLoad:
    """Loads at registration; fails once TOY_BROKEN is set (packaged code is imported
    fresh on every load, so a class attribute could not carry the switch)."""

    def load(self, files: dict[str, Any]) -> None:
        if os.environ.get("TOY_BROKEN"):
            raise RuntimeError("weights are corrupt")

    def predict(self, x: Any) -> Any:
        return x


class Tripler:
    """Returns 3x: a shadow or canary whose answers differ from the Doubler's."""

    def predict(self, x: Any) -> Any:
        return np.asarray(x, dtype=np.float64).sum(axis=1) * 3


class Raises:
    """Answers its registration sample, then raises once TOY_RAISE is set: a shadow
    that fails every call."""

    def predict(self, x: Any) -> Any:
        if os.environ.get("TOY_RAISE"):
            raise RuntimeError("shadow is broken")
        return np.asarray(x, dtype=np.float64).sum(axis=1)


class Sleeps(Doubler):
    """Sleeps 1 s per call once TOY_SLEEP is set (not while it loads)."""

    def predict(self, x: Any) -> Any:
        if os.environ.get("TOY_SLEEP"):
            time.sleep(1.0)
        return super().predict(x)
