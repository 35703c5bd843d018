"""Implicit-feedback recommenders as item factors: arrays and id maps, no pickle.

A `FactorModel` holds what an ALS (or any matrix-factorization) training leaves for
the items: their factors, their ids, and a popularity ranking for users with no
history. Users are not stored: each request carries the user's recent history, and the
user's factors are solved from it on the spot (the "fold-in" of implicit ALS), so a
listen made a second ago already shapes the next recommendation.

Input (tensor layout): `history`, BYTES [H], the user's recent item ids, most recent
first, padded with "". Outputs: `items` BYTES [K] and `scores` FP32 [K], best first,
excluding the history; `cold` BOOL, true when the history held no known item and the
answer is the popularity ranking.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import FlavorError
from modelport.flavors.base import Flavor


@dataclass
class FactorModel:
    """Item factors of an implicit-feedback model (e.g. `implicit`'s ALS)."""

    item_factors: np.ndarray
    """[n_items, n_factors] float32."""
    item_ids: list[str]
    popularity: np.ndarray
    """[n_items]: interaction counts (or any score) for cold-start answers."""
    regularization: float = 0.01
    alpha: float = 1.0
    """Confidence scaling: an item seen c times in the history weighs 1 + alpha * c."""
    top_k: int = 50
    """How many items each answer holds (callers take the first k they need)."""

    def __post_init__(self) -> None:
        self.item_factors = np.ascontiguousarray(self.item_factors, dtype=np.float32)
        self.item_ids = [str(i) for i in self.item_ids]
        self.popularity = np.asarray(self.popularity, dtype=np.float64)
        n = len(self.item_ids)
        if self.item_factors.shape[0] != n or self.popularity.shape != (n,):
            raise FlavorError(
                f"FactorModel: {self.item_factors.shape[0]} factor rows, {n} item ids and "
                f"{self.popularity.shape} popularity values must agree")
        self._index = {item: i for i, item in enumerate(self.item_ids)}
        yty = self.item_factors.T.astype(np.float64) @ self.item_factors
        self._gram = yty + self.regularization * np.eye(yty.shape[0])
        self._popular = np.argsort(-self.popularity, kind="stable")

    def user_factors(self, history: list[str]) -> np.ndarray | None:
        """Solve a user's factors from their history (one step of implicit ALS)."""
        counts: dict[int, int] = {}
        for item in history:
            index = self._index.get(item)
            if index is not None:
                counts[index] = counts.get(index, 0) + 1
        if not counts:
            return None
        idx = np.fromiter(counts, dtype=np.intp)
        confidence = 1.0 + self.alpha * np.fromiter(counts.values(), dtype=np.float64)
        y = self.item_factors[idx].astype(np.float64)
        a = self._gram + (y.T * (confidence - 1.0)) @ y
        b = y.T @ confidence
        return np.linalg.solve(a, b).astype(np.float32)

    def recommend(self, histories: np.ndarray) -> dict[str, np.ndarray]:
        n, k = len(histories), self.top_k
        items = np.empty((n, k), dtype=object)
        scores = np.zeros((n, k), dtype=np.float32)
        cold = np.zeros(n, dtype=np.bool_)
        for row, history in enumerate(histories):
            seen = [str(h) for h in history if h not in ("", None)]
            exclude = {self._index[s] for s in seen if s in self._index}
            factors = self.user_factors(seen)
            if factors is None:
                cold[row] = True
                ranked = self._popular[: k + len(exclude)]
                ranked_scores = self.popularity[ranked]
            else:
                all_scores = self.item_factors @ factors
                if exclude:
                    all_scores[list(exclude)] = -np.inf
                top = np.argpartition(-all_scores, min(k, len(all_scores) - 1))[:k]
                ranked = top[np.argsort(-all_scores[top], kind="stable")]
                ranked_scores = all_scores[ranked]
            keep = [i for i, item in enumerate(ranked) if item not in exclude][:k]
            chosen = ranked[keep]
            items[row, : len(chosen)] = [self.item_ids[i] for i in chosen]
            items[row, len(chosen):] = ""
            scores[row, : len(chosen)] = ranked_scores[keep]
        return {"items": items, "scores": scores, "cold": cold}

    def predict(self, x: Any) -> dict[str, np.ndarray]:
        histories = x["history"] if isinstance(x, dict) else x
        return self.recommend(np.asarray(histories, dtype=object).reshape(len(histories), -1))


class FactorsFlavor(Flavor):
    name = "factors"

    @classmethod
    def save(cls, obj: Any, path: Path, *, trusted: bool = False) -> dict[str, Any]:
        if not isinstance(obj, FactorModel):
            raise FlavorError("the factors flavor saves a modelport.flavors.factors.FactorModel")
        np.save(path / "item_factors.npy", obj.item_factors, allow_pickle=False)
        np.save(path / "popularity.npy", obj.popularity, allow_pickle=False)
        (path / "items.json").write_text(json.dumps(obj.item_ids))
        return {"regularization": obj.regularization, "alpha": obj.alpha, "top_k": obj.top_k}

    def load(self) -> None:
        self.model = FactorModel(
            item_factors=np.load(self.path / "item_factors.npy", allow_pickle=False),
            item_ids=json.loads((self.path / "items.json").read_text()),
            popularity=np.load(self.path / "popularity.npy", allow_pickle=False),
            regularization=float(self.options["regularization"]),
            alpha=float(self.options["alpha"]),
            top_k=int(self.options["top_k"]),
        )

    def predict(self, x: Any) -> Any:
        return self.model.predict(x)
