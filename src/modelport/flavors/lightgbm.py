"""LightGBM boosters and their scikit-learn wrappers, saved in LightGBM's text format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelport.flavors._boosting import answer, classes_of, not_fitted
from modelport.flavors.base import Flavor, require


class LightGBMFlavor(Flavor):
    """A classifier wrapper answers `predictions` (labels) and `probabilities`, like
    the sklearn flavor; a regressor or a bare Booster answers `predictions`.

    The text format keeps the best iteration of an early-stopped model, which the
    loaded booster then predicts with, as the wrapper does.
    """

    name = "lightgbm"

    @classmethod
    def save(cls, obj: Any, path: Path, *, trusted: bool = False) -> dict[str, Any]:
        try:
            # an unfitted wrapper raises (an AttributeError, too) rather than answer None
            booster = obj.booster_ if hasattr(type(obj), "booster_") else obj
        except Exception as exc:
            raise not_fitted(obj, exc) from exc
        booster.save_model(str(path / "model.txt"))
        return {"classes": classes_of(obj)}

    @classmethod
    def read_file(cls, path: Path, *, trusted: bool = False) -> Any:
        lgb = require("lightgbm", "lightgbm")

        return lgb.Booster(model_file=str(path))

    def load(self) -> None:
        lgb = require("lightgbm", "lightgbm")

        self.booster = lgb.Booster(model_file=str(self.path / "model.txt"))
        classes = self.options.get("classes")
        self.classes = None if classes is None else np.asarray(classes)

    def predict(self, x: Any) -> Any:
        return answer(np.asarray(self.booster.predict(x)), self.classes)
