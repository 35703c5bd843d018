"""The gate: a better model is promoted, a worse one refused, both with their evidence
in the registry; too few evaluation users decide nothing."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest
from modelport import NotFound, Registry

from music.als import AlsParams
from music.gate import publish
from music.system import System
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
    assert first.evidence is not None and first.evidence.low is not None
    assert first.evidence.low > 0  # the paired interval lies above 0

    worse = publish(registry, results["poor"], config)
    assert not worse.promoted and worse.previous == first.version
    assert f"(v{first.version} on this hold-out)" in worse.reason
    assert worse.reason.endswith("below 0")

    better = publish(registry, results["good"], config)  # the same as production: a tie
    assert not better.promoted and better.verdict == "refused"
    assert better.evidence is not None and better.evidence.low == better.evidence.high == 0

    assert registry.get_alias("music-recommender", "production") == first.version
    versions = {v.version: v for v in registry.list_versions("music-recommender")}
    assert versions[1].tags["gate"] == "promoted" and versions[1].aliases == ["production"]
    assert versions[2].tags["gate"] == "refused"
    assert versions[2].tags["gate_reason"] == worse.reason

    # the evidence, as recorded: both values, the interval and the users
    users = len(results["good"].holdout.users)
    refused = versions[2]
    assert refused.tags["gate_against"] == "v1 on this hold-out"
    assert refused.metrics["gate_recall@10"] == pytest.approx(
        results["poor"].als.metrics["recall@10"])
    assert refused.metrics["gate_bar_recall@10"] == pytest.approx(
        results["good"].als.metrics["recall@10"])  # production, re-scored: the same number
    assert refused.metrics["gate_difference_low"] < refused.metrics["gate_difference_high"] < 0
    assert refused.metrics["gate_users"] == users == refused.metrics["users"] > 100
    promoted = versions[1]
    assert promoted.metrics["gate_bar_recall@10"] == pytest.approx(
        results["good"].baseline.metrics["recall@10"])
    assert 0 < promoted.metrics["gate_difference_low"] < promoted.metrics["gate_difference_high"]
    history = registry.alias_history("music-recommender", "production")
    # one move; the refusals are recorded beside it, each with the gate's sentence
    assert [(e.kind, e.from_version, e.to_version) for e in history] == [
        ("set", None, 1), ("refuse", 1, 2), ("refuse", 1, 3)]
    assert history[0].reason == f"gate: {first.reason}"
    assert history[1].reason == f"gate refuse: {worse.reason}"


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
    assert last.reason.endswith(f"over {decision.evidence.users} users, above 0")  # type: ignore[union-attr]
    assert registry.resolve("music-recommender@production").metrics["gate_difference_low"] > 0


def test_too_few_evaluation_users_decide_nothing(
        registry: Registry, events: pd.DataFrame, capsys: pytest.CaptureFixture[str]) -> None:
    few = events[events["user"].isin(events["user"].drop_duplicates().iloc[:60])]
    result = train(few, TrainConfig(params=GOOD), progress=print)
    assert len(result.holdout.users) < 100 and result.too_few_users
    assert "fewer than 100): the metrics are too noisy" in capsys.readouterr().out
    decision = publish(registry, result, TrainConfig(params=GOOD))
    assert not decision.promoted and decision.verdict == "undecided"
    assert decision.reason.startswith(f"not decided: {len(result.holdout.users)} evaluation "
                                      "users, fewer than 100")
    version = registry.resolve(f"music-recommender:{decision.version}")
    assert version.tags["gate"] == "undecided"
    assert version.metrics["users"] == version.metrics["gate_users"] < 100
    with pytest.raises(NotFound):
        registry.get_alias("music-recommender", "production")


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
    assert als.tags["dataset"] == "small"
    assert als.tags["split"] == "per-user time split: last 20% of each user's events"
    assert als.metrics["users"] == len(result.holdout.users) > 100
    assert als.metrics["recall@10_low"] < als.metrics["recall@10"] < als.metrics["recall@10_high"]
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
    first = publish(registry, everything, TrainConfig(params=GOOD))
    assert first.verdict == "undecided"  # a one-day window holds out too few users
    registry.set_alias("music-recommender", "production", first.version, reason="by hand")
    decision = publish(registry, results["good"], TrainConfig(params=GOOD))
    assert "as recorded on its own hold-out" in decision.reason
    # no paired comparison is possible: the candidate's own interval must clear the record
    evidence = decision.evidence
    assert evidence is not None and evidence.low is None
    assert evidence.bar == registry.resolve("music-recommender:1").metrics["recall@10"]
    assert ("95% interval [" in decision.reason
            and decision.promoted == (evidence.candidate_interval[0] > evidence.bar))


def test_per_user_splits_rescore_production_trained_on_the_same_part(
        registry: Registry, events: pd.DataFrame) -> None:
    # a per-user split interleaves train and test in time: only the same training part
    # (same data, split and range) makes re-scoring production fair
    good = TrainConfig(params=GOOD)
    publish(registry, train(events, good), good)
    poor = TrainConfig(params=POOR)
    decision = publish(registry, train(events, poor), poor)
    assert not decision.promoted and "(v1 on this hold-out)" in decision.reason
    other = TrainConfig(params=POOR, test_fraction=0.3)
    decision = publish(registry, train(events, other), other)
    assert "as recorded on its own hold-out" in decision.reason


def test_the_nightly_retraining_runs_through_modelports_loop(
        registry: Registry, events: pd.DataFrame, results: dict[str, TrainResult]) -> None:
    """A deliberately worse trainer leaves production unchanged, saying why in the alias
    history; a better one is promoted by the same loop."""
    from music.nightly import retrainer

    first = publish(registry, results["good"], TrainConfig(params=GOOD))
    worse = retrainer(registry, lambda: events, params=POOR, cron=None).run("schedule")
    assert not worse.promoted and worse.previous == first.version
    assert registry.get_alias("music-recommender", "production") == first.version
    last = registry.alias_history("music-recommender", "production")[-1]
    assert (last.kind, last.actor, last.from_version, last.to_version) == (
        "refuse", "retrain:music-retrain", first.version, worse.version)
    assert last.reason == worse.reason
    # production was trained on another data set's events: its record is the bar
    assert last.reason.startswith("gate refuse: recall@10 ")
    assert last.reason.endswith("is not above the bar")
    refused = registry.resolve(f"music-recommender:{worse.version}")
    assert refused.tags["gate"] == "refused"

    # an operator forces the poor version in; the nightly loop brings a better one back
    registry.set_alias("music-recommender", "production", worse.version, reason="by hand")
    better = retrainer(registry, lambda: events, params=GOOD, cron=None).run("schedule")
    assert better.promoted and better.kept
    assert registry.get_alias("music-recommender", "production") == better.version
    moved = registry.alias_history("music-recommender", "production")[-1]
    assert (moved.kind, moved.actor) == ("set", "retrain:music-retrain")
    assert moved.reason is not None and "retrain:music-retrain (schedule)" in moved.reason


def test_the_nightly_scheduler_retrains_from_the_listens_table(system: System) -> None:
    """The scheduled job trains on the system's listens and leaves its decision, either
    way, in the alias history (the bootstrap's version is production)."""
    from music.nightly import RETRAIN_CRON, scheduler

    assert list(scheduler(system, report_cron=None).jobs) == ["music-retrain", "music-nightly"]
    # the retrain alone: between 02:00 and 03:00 UTC the nightly batch's turn comes first
    jobs = scheduler(system, cron=None, report_cron=None)
    assert jobs.jobs["music-retrain"].cron == RETRAIN_CRON
    with Registry(settings=system.settings()) as registry:
        before = registry.get_alias("music-recommender", "production")

    async def run_once() -> None:
        assert jobs.run_pending(jobs.jobs["music-retrain"].next_at) == ["music-retrain"]
        task = jobs.jobs["music-retrain"].task
        assert task is not None
        await task

    asyncio.run(run_once())
    with Registry(settings=system.settings()) as registry:
        last = registry.alias_history("music-recommender", "production")[-1]
        versions = registry.list_versions("music-recommender")
    assert last.actor == "retrain:music-retrain" and last.from_version == before
    assert last.to_version == versions[-1].version
    assert last.kind in ("set", "refuse") and last.reason
    assert versions[-1].tags["dataset"] == "listens"
