"""Python-flavor models for the promotion tests (packaged with their artifacts)."""

from __future__ import annotations

from typing import Any

import numpy as np


class Summer:
    """Each row's sum."""

    def predict(self, x: Any) -> Any:
        return np.asarray(x, dtype=np.float64).sum(axis=1)


class FailsOneRowInFive(Summer):
    """Refuses every row whose first value is a multiple of 5: one row in five of a
    counting load."""

    def predict(self, x: Any) -> Any:
        x = np.asarray(x, dtype=np.float64)
        if (x[:, 0] % 5 == 0).any():
            raise ValueError("refuses multiples of five")
        return super().predict(x)


class OffOneRowInFive(Summer):
    """Answers one more than the sum on every row whose first value is a multiple of 5:
    it disagrees with `Summer` on one row in five of a counting load, and never fails."""

    def predict(self, x: Any) -> Any:
        x = np.asarray(x, dtype=np.float64)
        return super().predict(x) + (x[:, 0] % 5 == 0)
