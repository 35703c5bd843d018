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
from collections.abc import Iterable
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
        self._ids = np.array(self.item_ids, dtype=object)
        yty = self.item_factors.T.astype(np.float64) @ self.item_factors
        self._gram = yty + self.regularization * np.eye(yty.shape[0])
        popular = np.argsort(-self.popularity, kind="stable")[: self.top_k]
        self._popular_ids, self._popular_scores = self._ids[popular], self.popularity[popular]

    def _counts(self, history: Iterable[Any]) -> dict[int, int]:
        """Plays per known item of a history (padding and unknown items left out)."""
        counts: dict[int, int] = {}
        index = self._index
        for item in history:
            if item in ("", None):
                continue
            i = index.get(str(item))
            if i is not None:
                counts[i] = counts.get(i, 0) + 1
        return counts

    def _fold_in(self, users: list[dict[int, int]]) -> np.ndarray:
        """[len(users), n_factors] float32: each user's factors solved from their plays
        (one step of implicit ALS), all of them in one batched solve."""
        f = self._gram.shape[0]
        a = np.empty((len(users), f, f))
        b = np.empty((len(users), f))
        for row, counts in enumerate(users):
            idx = np.fromiter(counts, dtype=np.intp, count=len(counts))
            confidence = 1.0 + self.alpha * np.fromiter(counts.values(), dtype=np.float64,
                                                        count=len(counts))
            y = self.item_factors[idx].astype(np.float64)
            a[row] = self._gram + (y.T * (confidence - 1.0)) @ y
            b[row] = y.T @ confidence
        return np.linalg.solve(a, b[..., None])[..., 0].astype(np.float32)

    def user_factors(self, history: list[str]) -> np.ndarray | None:
        """Solve a user's factors from their history (one step of implicit ALS)."""
        counts = self._counts(history)
        return self._fold_in([counts])[0] if counts else None

    def recommend(self, histories: np.ndarray) -> dict[str, np.ndarray]:
        n, k = len(histories), self.top_k
        items = np.full((n, k), "", dtype=object)
        scores = np.zeros((n, k), dtype=np.float32)
        cold = np.zeros(n, dtype=np.bool_)
        plays = [self._counts(history) for history in histories]
        warm = [row for row, counts in enumerate(plays) if counts]
        cold[:] = True
        cold[warm] = False
        # cold rows: no known item, so nothing to exclude from the popular list
        items[cold, : len(self._popular_ids)] = self._popular_ids
        scores[cold, : len(self._popular_ids)] = self._popular_scores
        if not warm:
            return {"items": items, "scores": scores, "cold": cold}
        # one matrix product for the batch, the item factors read once rather than per
        # user: [n_items, users], as BLAS is fastest at items @ users.T (faster than a
        # product per user, or than users @ items.T)
        all_scores = self.item_factors @ self._fold_in([plays[row] for row in warm]).T
        for user, row in enumerate(warm):
            row_scores = all_scores[:, user]
            heard = np.fromiter(plays[row], dtype=np.intp, count=len(plays[row]))
            row_scores[heard] = -np.inf
            top = top_indices(row_scores, k)
            if len(top) and row_scores[top[-1]] == -np.inf:
                # fewer than k items left unheard: what the history holds is not an answer
                top = top[~np.isin(top, heard)]
            items[row, : len(top)] = self._ids[top]
            scores[row, : len(top)] = row_scores[top]
        return {"items": items, "scores": scores, "cold": cold}

    def predict(self, x: Any) -> dict[str, np.ndarray]:
        histories = x["history"] if isinstance(x, dict) else x
        return self.recommend(np.asarray(histories, dtype=object).reshape(len(histories), -1))


SAMPLE = 2048
"""About how many scores `top_indices` reads to guess its threshold."""


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` highest of `scores` (1-D), best first; ties in index order.

    `np.argpartition` over every item, on every request, costs more than the rest of
    the ranking. Instead a threshold is read off a strided sample of the scores, as
    the sample's j-th highest, with j chosen so that about 3k scores pass it; a
    vectorized comparison keeps those, and only they are sorted. The answer is exact:
    the k highest are among any set of at least k scores at or above a threshold, and
    when too few pass (a skewed sample) the exact k-th highest is the threshold.
    """
    n = len(scores)
    if k >= n:
        return np.argsort(-scores, kind="stable")
    candidates = None
    stride = max(1, n // SAMPLE)
    sample = scores[::stride]
    j = max(12, -(-3 * k // stride))  # 12 or more: rarely fewer than k pass
    if j < len(sample) // 2:
        threshold = np.partition(sample, len(sample) - j)[len(sample) - j]
        candidates = np.flatnonzero(scores >= threshold)
    if candidates is None or len(candidates) < k:
        candidates = np.flatnonzero(scores >= np.partition(scores, n - k)[n - k])
        if len(candidates) < k:  # NaN among the scores: compare nothing, sort all
            return np.argsort(-scores, kind="stable")[:k]
    return candidates[np.argsort(-scores[candidates], kind="stable")[:k]]


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
