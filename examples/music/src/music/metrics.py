"""Offline metrics of top-k lists, and evaluation through the serving path.

Relevance is binary: an item is relevant to a user if they played it after the cut and
not before. Definitions (k = 10 in the reports):

- recall@k = hits in the top k / min(k, relevant items): 1.0 is the best any list of
  k can do, also for users with more than k relevant items;
- NDCG@k = sum over hits of 1 / log2(rank + 1), over the same sum for a perfect list;
- coverage@k = distinct items in all users' top k / items in the catalogue: how much
  of the catalogue the recommender ever shows.

Every mean over users comes with a 95% bootstrap interval (users resampled with
replacement): with a few hundred users, recall@10 moves by a few points from one
sample of users to the next, and a number without its interval cannot say whether one
model is better than another. `paired_interval` is the same over the per-user
differences of two models on the same users: the gate's evidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from music.split import HoldOut

BATCH = 1024  # rows per predict call: bounds memory, as the service's batcher does
RESAMPLES = 1000  # bootstrap resamples: the interval's ends move by ~0.1 point between seeds
LEVEL = 0.95


def recall_at_k(recommended: Sequence[str], relevant: Collection[str], k: int = 10) -> float:
    if not relevant:
        raise ValueError("recall is undefined for a user with no relevant item")
    hits = sum(1 for item in recommended[:k] if item in relevant)
    return hits / min(k, len(relevant))


def ndcg_at_k(recommended: Sequence[str], relevant: Collection[str], k: int = 10) -> float:
    if not relevant:
        raise ValueError("NDCG is undefined for a user with no relevant item")
    dcg = sum(1.0 / math.log2(rank + 2)
              for rank, item in enumerate(recommended[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(relevant))))
    return dcg / ideal


def coverage_at_k(lists: Iterable[Sequence[str]], catalog_size: int, k: int = 10) -> float:
    if catalog_size <= 0:
        raise ValueError("coverage needs a catalogue of at least one item")
    shown = {item for items in lists for item in items[:k] if item}
    return len(shown) / catalog_size


def bootstrap_interval(values: np.ndarray, *, seed: int = 0,
                       resamples: int = RESAMPLES, level: float = LEVEL) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `values` (one value per user)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("a confidence interval needs at least one user")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(values))  # bounds the index matrix to ~16 MB
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        means[start:start + n] = values[rng.integers(0, len(values), (n, len(values)))].mean(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_interval(candidate: np.ndarray, bar: np.ndarray, *,
                    seed: int = 0) -> tuple[float, float]:
    """Interval of the mean per-user difference `candidate - bar` (the same users, in order)."""
    if len(candidate) != len(bar):
        raise ValueError(f"paired scores need the same users: {len(candidate)} != {len(bar)}")
    return bootstrap_interval(np.asarray(candidate) - np.asarray(bar), seed=seed)


@dataclass
class Scores:
    """Each evaluated user's recall@k and NDCG@k (hold-out order), and the coverage."""

    recall: np.ndarray
    ndcg: np.ndarray
    coverage: float
    k: int

    @property
    def users(self) -> int:
        return len(self.recall)

    def metrics(self, seed: int = 0) -> dict[str, float]:
        """Means with their 95% bootstrap intervals (`<name>_low`, `<name>_high`)."""
        out: dict[str, float] = {}
        for name, values in ((f"recall@{self.k}", self.recall), (f"ndcg@{self.k}", self.ndcg)):
            low, high = bootstrap_interval(values, seed=seed)
            out |= {name: float(values.mean()), f"{name}_low": low, f"{name}_high": high}
        return out | {f"coverage@{self.k}": self.coverage, "users": self.users}


Predict = Callable[[dict[str, np.ndarray]], dict[str, Any]]


def evaluate(predict: Predict, holdout: HoldOut, *, catalog_size: int,
             k: int = 10, seed: int = 0) -> dict[str, float]:
    """recall@k, NDCG@k (with intervals) and coverage@k on `holdout`, and the users."""
    return score_users(predict, holdout, catalog_size=catalog_size, k=k).metrics(seed)


def score_users(predict: Predict, holdout: HoldOut, *, catalog_size: int,
                k: int = 10) -> Scores:
    """Each user's recall@k and NDCG@k on `holdout`, and coverage@k.

    `predict` answers `{"history": [n, H]}` with `{"items": [n, K], ...}`, as the
    factors flavor does: `FactorModel.predict` before registering (the very object the
    registry stores) or a registered version's `Model.predict_batch`, so these are
    the numbers of what is served.
    """
    if len(holdout.users) == 0:
        raise ValueError("the hold-out has no user to evaluate (is the test window empty?)")
    lists: list[list[str]] = []
    # The fold-in is one small solve and one matrix-vector product per user: BLAS
    # threads only contend for them
    with threadpool_limits(1, "blas"):
        for start in range(0, len(holdout.users), BATCH):
            out = predict({"history": holdout.histories[start:start + BATCH]})
            lists.extend(list(row[:k]) for row in np.asarray(out["items"]))
    pairs = list(zip(lists, holdout.relevant, strict=True))
    return Scores(recall=np.array([recall_at_k(r, rel, k) for r, rel in pairs]),
                  ndcg=np.array([ndcg_at_k(r, rel, k) for r, rel in pairs]),
                  coverage=coverage_at_k(lists, catalog_size, k), k=k)
