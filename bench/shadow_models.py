"""The shadow benchmark's shadows: one that raises and one that sleeps 1 s, each from
its second call on (the first is the smoke test of its load). Their own module so the
python flavor can package them."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class _AfterFirst:
    calls = 0

    def predict(self, x: Any) -> Any:
        type(self).calls += 1
        if type(self).calls > 1:
            self.misbehave()
        return np.asarray(x, dtype=np.float64).sum(axis=1)

    def misbehave(self) -> None:
        raise NotImplementedError


class Raises(_AfterFirst):
    def misbehave(self) -> None:
        raise RuntimeError("the shadow is broken")


class Sleeps(_AfterFirst):
    def misbehave(self) -> None:
        time.sleep(1.0)
