"""Offline metrics of top-k lists, and evaluation through the serving path.

Relevance is binary: an item is relevant to a user if they played it after the cut and
not before. Definitions (k = 10 in the reports):

- recall@k = hits in the top k / min(k, relevant items): 1.0 is the best any list of
  k can do, also for users with more than k relevant items;
- NDCG@k = sum over hits of 1 / log2(rank + 1), over the same sum for a perfect list;
- coverage@k = distinct items in all users' top k / items in the catalogue: how much
  of the catalogue the recommender ever shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from music.split import HoldOut

BATCH = 1024  # rows per predict call: bounds memory, as the service's batcher does


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


Predict = Callable[[dict[str, np.ndarray]], dict[str, Any]]


def evaluate(predict: Predict, holdout: HoldOut, *, catalog_size: int,
             k: int = 10) -> dict[str, float]:
    """recall@k, NDCG@k and coverage@k on `holdout`, plus the number of users.

    `predict` answers `{"history": [n, H]}` with `{"items": [n, K], ...}`, as the
    factors flavor does: `FactorModel.predict` before registering (the very object the
    registry stores) or a registered version's `Model.predict_batch`, so these are
    the numbers of what is served.
    """
    if len(holdout.users) == 0:
        raise ValueError("the hold-out has no user to evaluate (is the test window empty?)")
    lists: list[list[str]] = []
    # The fold-in is one small solve and one matrix-vector product per user: BLAS
    # threads only contend for them (ten times slower on a busy two-core machine)
    with threadpool_limits(1, "blas"):
        for start in range(0, len(holdout.users), BATCH):
            out = predict({"history": holdout.histories[start:start + BATCH]})
            lists.extend(list(row[:k]) for row in np.asarray(out["items"]))
    return {
        f"recall@{k}": float(np.mean([recall_at_k(r, rel, k)
                                      for r, rel in zip(lists, holdout.relevant, strict=True)])),
        f"ndcg@{k}": float(np.mean([ndcg_at_k(r, rel, k)
                                    for r, rel in zip(lists, holdout.relevant, strict=True)])),
        f"coverage@{k}": coverage_at_k(lists, catalog_size, k),
        "users": len(lists),
    }
