"""LightGBM boosters and their scikit-learn wrappers, saved in LightGBM's text format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelport.flavors.base import Flavor


class LightGBMFlavor(Flavor):
    """A classifier wrapper answers `predictions` (labels) and `probabilities`, like
    the sklearn flavor; a regressor or a bare Booster answers `predictions`."""

    name = "lightgbm"

    @classmethod
    def save(cls, obj: Any, path: Path, *, trusted: bool = False) -> dict[str, Any]:
        booster = getattr(obj, "booster_", obj)
        booster.save_model(str(path / "model.txt"))
        classes = getattr(obj, "classes_", None)
        return {"classes": None if classes is None else np.asarray(classes).tolist()}

    @classmethod
    def read_file(cls, path: Path, *, trusted: bool = False) -> Any:
        import lightgbm as lgb

        return lgb.Booster(model_file=str(path))

    def load(self) -> None:
        import lightgbm as lgb

        self.booster = lgb.Booster(model_file=str(self.path / "model.txt"))
        classes = self.options.get("classes")
        self.classes = None if classes is None else np.asarray(classes)

    def predict(self, x: Any) -> Any:
        raw = self.booster.predict(x)
        if self.classes is None:
            return {"predictions": raw}
        proba = np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw
        return {"predictions": self.classes[np.argmax(proba, axis=1)], "probabilities": proba}
