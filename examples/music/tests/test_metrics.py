"""Metric functions on hand-made cases: the exact numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from music.metrics import (
    bootstrap_interval,
    coverage_at_k,
    evaluate,
    ndcg_at_k,
    paired_interval,
    recall_at_k,
)
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
    ndcg = 0.5 / math.log2(3)  # users: 1 / log2 3 and 0
    assert metrics == {"recall@2": 0.5, "recall@2_low": 0.0, "recall@2_high": 1.0,
                       "ndcg@2": pytest.approx(ndcg), "ndcg@2_low": 0.0,
                       "ndcg@2_high": pytest.approx(2 * ndcg),
                       "coverage@2": 0.5, "users": 2}


def test_bootstrap_intervals_cover_the_mean_and_narrow_with_more_users() -> None:
    rng = np.random.default_rng(1)
    few, many = rng.random(50), rng.random(5000)
    for values in (few, many):
        low, high = bootstrap_interval(values)
        assert low < values.mean() < high
    # the width of a mean's interval shrinks as 1 / sqrt(users): 10 times here
    width = (np.subtract(*bootstrap_interval(few)[::-1]),
             np.subtract(*bootstrap_interval(many)[::-1]))
    assert 5 < width[0] / width[1] < 20
    assert bootstrap_interval(np.full(10, 0.3)) == pytest.approx((0.3, 0.3))


def test_paired_interval_is_of_the_per_user_difference() -> None:
    base = np.random.default_rng(2).random(400)
    low, high = paired_interval(base + 0.05, base)
    assert low == pytest.approx(0.05) and high == pytest.approx(0.05)  # no noise: exact
    noisy = base + np.random.default_rng(3).normal(0, 0.2, 400)
    low, high = paired_interval(noisy, base)
    assert low < 0 < high  # no difference on average: the interval says so
    with pytest.raises(ValueError, match="same users"):
        paired_interval(base, base[:10])
