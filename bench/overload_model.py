"""The overload benchmark's model: 20 ms of sleep a call, like a model that holds a
device for that long. Its own module so the python flavor can package it."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

DELAY_S = 0.020


class Sleeper:
    def predict(self, x: Any) -> Any:
        time.sleep(DELAY_S)
        return np.asarray(x, dtype=np.float64).sum(axis=1)


class Gated:
    """Answers at once, but holds every call while the file named by the environment's
    MODELPORT_BENCH_GATE exists: `refusal_cost.py` keeps the queue full with it."""

    def predict(self, x: Any) -> Any:
        gate = os.environ.get("MODELPORT_BENCH_GATE")
        while gate and os.path.exists(gate):
            time.sleep(0.05)
        return np.asarray(x, dtype=np.float64).sum(axis=1)
