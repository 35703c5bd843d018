"""Training: ALS beats popularity, the fold-in matches implicit, tuning stays on train."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from music.als import GRID, AlsParams, fit_als, interaction_matrix, popularity_model
from music.data import Dataset
from music.train import TrainConfig, compare, start_point, train, tune

# small and quick, and good on the small data set (a validation window chose it)
QUICK = AlsParams(factors=16, regularization=1.0, alpha=5.0, iterations=10)


def test_als_beats_popularity_on_recall(events: pd.DataFrame) -> None:
    result = train(events, TrainConfig(params=QUICK))
    als, baseline = result.als.metrics, result.baseline.metrics
    assert als["users"] == baseline["users"] == len(result.holdout.users) > 500
    assert als["recall@10_low"] < als["recall@10"] < als["recall@10_high"]
    assert baseline["recall@10_high"] < als["recall@10_low"]
    assert als["recall@10"] > 1.5 * baseline["recall@10"]
    assert als["ndcg@10"] > baseline["ndcg@10"]
    assert als["coverage@10"] > baseline["coverage@10"]
    assert result.als.params == QUICK.as_dict()
    assert result.trials == []  # fixed parameters: no tuning


def test_fold_in_is_implicits_own_user_solve(events: pd.DataFrame) -> None:
    """The service's fold-in and implicit's training solve agree (the alpha convention)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    matrix = interaction_matrix(events.iloc[:20_000])
    params = AlsParams(factors=8, regularization=0.5, alpha=4.0, iterations=3)
    model = fit_als(matrix, params)
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(factors=8, regularization=0.5, alpha=1.0)
    als.item_factors = model.item_factors
    row = matrix.counts[0]
    history = np.repeat(np.asarray(matrix.items)[row.indices], row.data.astype(int)).tolist()
    confidence = row.copy()
    confidence.data = 1.0 + params.alpha * confidence.data
    expected = als.recalculate_user(0, confidence)
    np.testing.assert_allclose(model.user_factors(history), expected.ravel(), rtol=1e-3,
                               atol=1e-5)


def test_popularity_model_ranks_by_plays_without_the_history() -> None:
    events = pd.DataFrame({"user": list("aaabbbcd"), "item": list("xyzxyxwx"),
                           "ts": pd.Timestamp("2024-01-01", tz="UTC"), "weight": 1.0})
    model = popularity_model(interaction_matrix(events))  # plays: x 4, y 2, z 1, w 1
    out = model.predict({"history": np.array([["y", ""], ["", ""], ["x", "w"]],
                                             dtype=object)})
    assert out["items"][0][:3].tolist() == ["x", "w", "z"]  # ties keep the id order
    assert out["items"][1][:2].tolist() == ["x", "y"]  # cold: the same ranking
    # a cold answer's scores: the share of listeners who played each (x: a, b, d of 4),
    # on the scale of a known listener's predicted preference, not play counts
    assert out["scores"][1][:2].tolist() == [0.75, 0.5]
    assert out["items"][2][:2].tolist() == ["y", "z"]
    assert out["cold"].tolist() == [False, True, False]


def test_tuning_searches_the_grid_on_the_training_part_only(
        events: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    import music.train

    grid = {"factors": [8, 16], "regularization": [1.0], "alpha": [5.0], "iterations": [5]}
    config = TrainConfig(grid=grid, tune_rounds=1)
    tuned_on: list[pd.DataFrame] = []

    def spy(frame: pd.DataFrame, *args: object, **kwargs: object) -> object:
        tuned_on.append(frame)
        return tune(frame, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(music.train, "tune", spy)
    result = train(events, config)
    pd.testing.assert_frame_equal(tuned_on[0], result.split.train)
    # per user, everything tuning saw precedes that user's test events
    last_seen = tuned_on[0].groupby("user", observed=True)["ts"].max()
    first_test = result.split.test.groupby("user", observed=True)["ts"].min()
    assert (last_seen.reindex(first_test.index) <= first_test).all()
    assert {t.params.factors for t in result.trials} == {8, 16}  # all on the grid
    best = max(result.trials, key=lambda t: t.metrics["recall@10"])
    assert result.als.params == best.params.as_dict()


def test_search_starts_near_implicits_defaults() -> None:
    assert start_point(GRID) == AlsParams(factors=128, regularization=0.01, alpha=1.0,
                                          iterations=15)
    assert start_point({"factors": [8, 16]}).factors == 16


def test_compare_lists_baseline_defaults_and_tuned(events: pd.DataFrame) -> None:
    grid = {"factors": [16], "regularization": [1.0], "alpha": [5.0], "iterations": [10]}
    rows = compare(events, TrainConfig(grid=grid, tune_rounds=1))
    assert [r.label for r in rows] == ["popularity", "ALS, implicit's defaults", "ALS, tuned"]
    assert rows[1].params == AlsParams().as_dict()
    assert rows[2].params == QUICK.as_dict()
    assert len({r.metrics["users"] for r in rows}) == 1  # one hold-out for all three


def test_catalog_fixes_the_items(events: pd.DataFrame) -> None:
    catalog = [*sorted(set(events["item"].astype(str))), "never-played"]
    result = train(events, TrainConfig(params=QUICK), catalog=catalog)
    assert result.catalog_size == len(catalog)
    assert result.als.model.item_ids == catalog
    with pytest.raises(ValueError, match="empty train or test"):
        train(events, TrainConfig(params=QUICK, test_days=10_000))


def test_top_10_follows_the_listeners_favourite_genre(events: pd.DataFrame,
                                                      small: Dataset) -> None:
    genres = dict(zip(small.catalog["item"], small.catalog["genre"], strict=True))
    result = train(events, TrainConfig(params=QUICK), genres=genres)
    als, baseline = result.als.metrics, result.baseline.metrics
    assert als["genre_users"] == len(result.holdout.users)
    catalog = als["genre_catalog_share"]
    assert baseline["genre_catalog_share"] == catalog  # the same users, the same genres
    # 16 genres of unequal size: a list blind to taste gets about a tenth in the
    # favourite genre; ALS gets most of it, as the listeners' own plays do
    assert catalog < 0.2 < 0.5 < als["genre_share@10"]
    assert als["genre_share@10"] > 3 * catalog
    assert als["genre_share@10"] > 0.8 * als["genre_own_share"]
    assert baseline["genre_share@10"] < als["genre_share@10"] / 2
    # without genres, no taste check
    assert "genre_share@10" not in train(events, TrainConfig(params=QUICK)).als.metrics
