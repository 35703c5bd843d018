"""XGBoost boosters and their scikit-learn wrappers, saved in XGBoost's UBJSON format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelport.flavors.base import Flavor


class XGBoostFlavor(Flavor):
    """Answers like the lightgbm flavor: labels and probabilities for classifiers."""

    name = "xgboost"

    @classmethod
    def save(cls, obj: Any, path: Path, *, trusted: bool = False) -> dict[str, Any]:
        booster = obj.get_booster() if hasattr(obj, "get_booster") else obj
        booster.save_model(str(path / "model.ubj"))
        classes = getattr(obj, "classes_", None)
        return {"classes": None if classes is None else np.asarray(classes).tolist()}

    @classmethod
    def read_file(cls, path: Path, *, trusted: bool = False) -> Any:
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(path))
        return booster

    def load(self) -> None:
        import xgboost as xgb

        self.booster = xgb.Booster()
        self.booster.load_model(str(self.path / "model.ubj"))
        classes = self.options.get("classes")
        self.classes = None if classes is None else np.asarray(classes)

    def predict(self, x: Any) -> Any:
        import xgboost as xgb

        raw = self.booster.inplace_predict(x) if not isinstance(x, xgb.DMatrix) else \
            self.booster.predict(x)
        if self.classes is None:
            return {"predictions": raw}
        proba = np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw
        return {"predictions": self.classes[np.argmax(proba, axis=1)], "probabilities": proba}
