"""A python-flavor shadow for the batch tests (packaged with its artifact)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class BreaksLater:
    """Answers a label per row (its registration sample too), then raises once
    MP_TEST_SHADOW_BREAKS is set: a shadow that fails every call of a job."""

    def predict(self, x: Any) -> Any:
        if os.environ.get("MP_TEST_SHADOW_BREAKS"):
            raise RuntimeError("the shadow is broken")
        return np.zeros(len(x), dtype=np.int64)


class SlowLater(BreaksLater):
    """Answers at once, then takes a second per call once MP_TEST_SHADOW_SLOW is set."""

    def predict(self, x: Any) -> Any:
        if os.environ.get("MP_TEST_SHADOW_SLOW"):
            import time

            time.sleep(1.0)
        return super().predict(x)
