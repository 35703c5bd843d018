"""XGBoost boosters and their scikit-learn wrappers, saved in XGBoost's UBJSON format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelport.flavors._boosting import answer, classes_of, not_fitted
from modelport.flavors.base import Flavor, require


class XGBoostFlavor(Flavor):
    """Answers like the lightgbm flavor: labels and probabilities for classifiers.

    A wrapper fitted with early stopping predicts with the trees up to its best
    iteration, a bare Booster with all of them; the loaded model does the same.
    """

    name = "xgboost"

    @classmethod
    def save(cls, obj: Any, path: Path, *, trusted: bool = False) -> dict[str, Any]:
        wrapper = hasattr(obj, "get_booster")
        try:
            booster = obj.get_booster() if wrapper else obj
        except Exception as exc:
            raise not_fitted(obj, exc) from exc
        booster.save_model(str(path / "model.ubj"))
        options: dict[str, Any] = {"classes": classes_of(obj)}
        best = getattr(obj, "best_iteration", None) if wrapper else None
        if best is not None and getattr(obj, "booster", None) != "gblinear":
            # the saved booster holds every tree; the wrapper's predict() stops here
            options["iterations"] = int(best) + 1
        return options

    @classmethod
    def read_file(cls, path: Path, *, trusted: bool = False) -> Any:
        xgb = require("xgboost", "xgboost")

        booster = xgb.Booster()
        booster.load_model(str(path))
        return booster

    def load(self) -> None:
        xgb = require("xgboost", "xgboost")

        self.dmatrix = xgb.DMatrix
        self.booster = xgb.Booster()
        self.booster.load_model(str(self.path / "model.ubj"))
        classes = self.options.get("classes")
        self.classes = None if classes is None else np.asarray(classes)
        self.iteration_range = (0, int(self.options.get("iterations") or 0))

    def predict(self, x: Any) -> Any:
        if isinstance(x, self.dmatrix):
            raw = self.booster.predict(x, iteration_range=self.iteration_range)
        else:
            raw = self.booster.inplace_predict(x, iteration_range=self.iteration_range)
        return answer(np.asarray(raw), self.classes)
