"""The gate: a better model is promoted, a worse one refused, both visibly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from modelport import Registry

from music.als import AlsParams
from music.gate import publish
from music.train import TrainConfig, TrainResult, train

GOOD = AlsParams(factors=16, regularization=1.0, alpha=5.0, iterations=10)
POOR = AlsParams(factors=2, regularization=0.01, alpha=1.0, iterations=1)


@pytest.fixture(scope="module")
def results(events: pd.DataFrame) -> dict[str, TrainResult]:
    return {"good": train(events, TrainConfig(params=GOOD)),
            "poor": train(events, TrainConfig(params=POOR))}


def test_first_version_must_beat_popularity_then_each_must_beat_production(
        registry: Registry, results: dict[str, TrainResult]) -> None:
    config = TrainConfig(params=GOOD)
    first = publish(registry, results["good"], config)
    assert first.promoted and first.previous is None
    assert "popularity baseline; no production version yet" in first.reason

    worse = publish(registry, results["poor"], config)
    assert not worse.promoted and worse.previous == first.version
    assert "<=" in worse.reason and f"(v{first.version} on this hold-out)" in worse.reason

    better = publish(registry, results["good"], config)  # the same as production: a tie
    assert not better.promoted

    assert registry.get_alias("music-recommender", "production") == first.version
    versions = {v.version: v for v in registry.list_versions("music-recommender")}
    assert versions[1].tags["gate"] == "promoted" and versions[1].aliases == ["production"]
    assert versions[2].tags["gate"] == "refused"
    assert versions[2].tags["gate_reason"] == worse.reason
    history = registry.alias_history("music-recommender", "production")
    assert [(e.from_version, e.to_version) for e in history] == [(None, 1)]
    assert history[0].reason == f"gate: {first.reason}"


def test_a_better_model_replaces_a_worse_production(
        registry: Registry, results: dict[str, TrainResult]) -> None:
    # a weak production (forced, as an operator might), then the gate's challenger
    config = TrainConfig(params=POOR)
    registry.set_alias("music-recommender", "production",
                       publish(registry, results["poor"], config).version, reason="by hand")
    decision = publish(registry, results["good"], TrainConfig(params=GOOD))
    assert decision.promoted and decision.previous == 1
    assert registry.get_alias("music-recommender", "production") == decision.version
    last = registry.alias_history("music-recommender", "production")[-1]
    assert (last.from_version, last.to_version) == (1, decision.version)
    assert last.reason is not None and last.reason.startswith("gate: recall@10 ")


def test_registered_versions_carry_metrics_params_tags_and_serve(
        registry: Registry, results: dict[str, TrainResult]) -> None:
    result = results["good"]
    decision = publish(registry, result, TrainConfig(params=GOOD, dataset="small"))
    als = registry.resolve("music-recommender@production")
    baseline = registry.resolve(f"music-recommender-popularity:{decision.baseline_version}")
    assert als.flavor == baseline.flavor == "factors"
    assert als.metrics["recall@10"] == pytest.approx(result.als.metrics["recall@10"])
    assert als.metrics["baseline_recall@10"] == pytest.approx(
        result.baseline.metrics["recall@10"])
    assert als.params["factors"] == 16 and als.params["history_length"] == 50
    assert als.tags["dataset"] == "small" and "last 14 days" in als.tags["split"]
    assert pd.Timestamp(als.tags["train_end"]) < pd.Timestamp(als.tags["test_start"])
    assert baseline.tags["kind"] == "popularity" and "gate" not in baseline.tags
    assert als.signature.inputs[0].shape == [50]
    assert als.profile["rows"] > 2  # the reference histories, not just the sample

    model = registry.load(als)
    history = np.array([result.holdout.histories[0]], dtype=object)
    served = model.predict_batch(model.signature.decode({"history": history}))
    direct = result.als.model.predict({"history": history})
    assert served["items"].tolist() == direct["items"].tolist()


def test_production_that_saw_the_test_window_is_judged_by_its_record(
        registry: Registry, events: pd.DataFrame, results: dict[str, TrainResult]) -> None:
    # production trained on everything, test window included: re-scoring would flatter it
    everything = train(events, TrainConfig(params=GOOD, test_days=1))
    publish(registry, everything, TrainConfig(params=GOOD))
    decision = publish(registry, results["good"], TrainConfig(params=GOOD))
    assert "as recorded on its own hold-out" in decision.reason


def test_per_user_splits_rescore_production_trained_on_the_same_part(
        registry: Registry, events: pd.DataFrame) -> None:
    # a per-user split interleaves train and test in time: only the same training part
    # (same data, split and range) makes re-scoring production fair
    good = TrainConfig(params=GOOD, test_days=None, per_user=True)
    publish(registry, train(events, good), good)
    poor = TrainConfig(params=POOR, test_days=None, per_user=True)
    decision = publish(registry, train(events, poor), poor)
    assert not decision.promoted and decision.reason.endswith("(v1 on this hold-out)")
    other = TrainConfig(params=POOR, test_days=None, per_user=True, test_fraction=0.3)
    decision = publish(registry, train(events, other), other)
    assert "as recorded on its own hold-out" in decision.reason
