"""Metric functions on hand-made cases: the exact numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from music.metrics import coverage_at_k, evaluate, ndcg_at_k, recall_at_k
from music.split import HoldOut


def test_recall_counts_hits_over_what_a_list_of_k_could_hold() -> None:
    assert recall_at_k(["a", "b", "c"], {"a", "c", "x", "y"}, k=3) == pytest.approx(2 / 3)
    assert recall_at_k(["a", "b", "c"], {"c"}, k=3) == 1.0
    assert recall_at_k(["a", "b", "c"], {"c"}, k=2) == 0.0  # the hit is past k
    assert recall_at_k(["x", "y"], {"a"}, k=10) == 0.0
    # 12 relevant items, 10 slots: 5 hits are half of the best possible
    relevant = {f"r{i}" for i in range(12)}
    assert recall_at_k([f"r{i}" for i in range(5)] + ["z"] * 5, relevant) == 0.5


def test_ndcg_weighs_hits_by_rank() -> None:
    assert ndcg_at_k(["a", "b"], {"a", "b"}, k=2) == pytest.approx(1.0)
    # one relevant item at rank 2: (1 / log2 3) / 1
    assert ndcg_at_k(["x", "a", "y"], {"a"}, k=3) == pytest.approx(1 / math.log2(3))
    # hits at ranks 1 and 3 of 2 relevant: (1 + 1/2) / (1 + 1/log2 3)
    assert ndcg_at_k(["a", "x", "b"], {"a", "b"}, k=3) == pytest.approx(
        1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["x", "y"], {"a"}, k=2) == 0.0


def test_coverage_counts_distinct_items_shown() -> None:
    lists = [["a", "b", "c"], ["a", "d", ""], ["e", "f", "g"]]
    assert coverage_at_k(lists, 10, k=2) == pytest.approx(5 / 10)  # a b d e f
    assert coverage_at_k(lists, 10, k=3) == pytest.approx(7 / 10)  # "" is not an item


def test_undefined_cases_raise() -> None:
    with pytest.raises(ValueError, match="no relevant item"):
        recall_at_k(["a"], set())
    with pytest.raises(ValueError, match="no relevant item"):
        ndcg_at_k(["a"], set())
    with pytest.raises(ValueError, match="at least one item"):
        coverage_at_k([["a"]], 0)


def test_evaluate_averages_over_users_through_predict() -> None:
    answers = np.array([["a", "b"], ["c", "d"]], dtype=object)

    def predict(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert batch["history"].shape == (2, 3)
        return {"items": answers[: len(batch["history"])]}

    holdout = HoldOut(users=np.array(["u1", "u2"], dtype=object),
                      histories=np.full((2, 3), "", dtype=object),
                      relevant=[{"b"}, {"x", "y"}], dropped_new_items=0)
    metrics = evaluate(predict, holdout, catalog_size=8, k=2)
    assert metrics == {"recall@2": 0.5, "ndcg@2": pytest.approx(0.5 / math.log2(3)),
                       "coverage@2": 0.5, "users": 2}
