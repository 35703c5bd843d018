"""Registering a trained recommender, and the gate that decides if it serves.

Both models of a training run are registered (artifacts: factor arrays and id maps, no
pickle): ALS as `<name>`, the popularity baseline as `<name>-popularity`, each with its
hold-out metrics, parameters, the split and the data's time range as tags.

The gate moves `<name>@production` to the new ALS version only if it beats the bar on
recall@k, strictly:

- the current production version, re-scored on the candidate's own hold-out through
  its registered serving path (load, validate, predict), so both face the same users
  and the same future;
- unless production may have been trained on events of that test set (its
  `train_end` tag is after the test start, and it was not trained on the very same
  training part): re-scoring would flatter it, so its recorded recall (from its own
  hold-out) is the bar, and the reason says so;
- with no production version yet, the popularity baseline on the same hold-out: a
  recommender that loses to "the most played" should not serve.

The decision is recorded three ways: the version's tags `gate` (promoted | refused)
and `gate_reason`, the alias move's `reason` in the audit trail, and the return value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from modelport import Registry
from modelport.errors import NotFound
from modelport.registry.store import ModelVersion

from music.metrics import evaluate
from music.split import HoldOut, recent_histories
from music.train import Candidate, TrainConfig, TrainResult, history_sample

ALIAS = "production"
PROFILE_ROWS = 1000  # users whose histories make the drift reference profile


@dataclass
class Decision:
    promoted: bool
    reason: str
    version: int
    """The ALS version just registered."""
    baseline_version: int
    previous: int | None
    """The production version before (None if there was none)."""


def publish(registry: Registry, result: TrainResult, config: TrainConfig) -> Decision:
    """Register the baseline and the ALS model, then apply the gate (see the module)."""
    recall = f"recall@{config.k}"
    baseline = _register(registry, f"{config.name}-popularity", result.baseline, result,
                         config, {"kind": "popularity"})
    previous, bar, against = _bar(registry, result, config)
    score = result.als.metrics[recall]
    promoted = score > bar
    reason = f"{recall} {score:.4f} {'>' if promoted else '<='} {bar:.4f} ({against})"
    extra_metrics = {f"baseline_{key}": value for key, value in result.baseline.metrics.items()
                     if key != "users"}
    version = _register(registry, config.name, result.als, result, config, {
        "kind": "als",
        "gate": "promoted" if promoted else "refused",
        "gate_reason": reason,
    }, extra_metrics)
    if promoted:
        registry.set_alias(config.name, ALIAS, version.version, reason=f"gate: {reason}")
    return Decision(promoted, reason, version.version, baseline.version, previous)


def _bar(registry: Registry, result: TrainResult,
         config: TrainConfig) -> tuple[int | None, float, str]:
    """(production version, the recall to beat, what that number is)."""
    recall = f"recall@{config.k}"
    try:
        current = registry.resolve(f"{config.name}@{ALIAS}")
    except NotFound:
        return (None, result.baseline.metrics[recall],
                "popularity baseline; no production version yet")
    test_start = result.split.test["ts"].min()
    if current.flavor != "factors":
        recorded = current.metrics.get(recall)
        return (current.version, float(recorded) if recorded is not None else float("-inf"),
                f"v{current.version} as recorded; a {current.flavor} model is not re-scored")
    if not _fair_to_rescore(current, result, config, test_start):
        recorded = current.metrics.get(recall)
        if recorded is None:
            return (current.version, float("-inf"),
                    f"v{current.version} has no {recall} recorded and saw the test window")
        return (current.version, float(recorded),
                f"v{current.version} as recorded on its own hold-out: it may have been "
                "trained on events of this test set")
    score = rescore(registry, current, result.split.train, result.holdout, result.catalog_size,
                    config.k)
    return current.version, score[recall], f"v{current.version} on this hold-out"


def _fair_to_rescore(current: ModelVersion, result: TrainResult, config: TrainConfig,
                     test_start: pd.Timestamp) -> bool:
    """Whether `current` was trained on nothing from the candidate's test set.

    True when all its training events precede the test window, or when it was trained
    on the very same training part (same data set, split and time range: a per-user
    split interleaves train and test in time, so only this tells it apart).
    """
    tags = current.tags
    if tags.get("train_end") is None:
        return False
    if pd.Timestamp(tags["train_end"]) < test_start:
        return True
    train = result.split.train["ts"]
    return (tags.get("dataset") == config.dataset
            and tags.get("split") == result.split.description
            and tags.get("train_start") == train.min().isoformat()
            and tags.get("train_end") == train.max().isoformat()
            and tags.get("train_events") == len(result.split.train))


def rescore(registry: Registry, version: ModelVersion, train: pd.DataFrame,
            holdout: HoldOut, catalog_size: int, k: int) -> dict[str, float]:
    """A registered version's metrics on `holdout`, asked as the service asks it."""
    model = registry.load(version)
    length = version.signature.inputs[0].shape[0]
    # its own history length: the version may predate a change of H
    users, histories = recent_histories(train, length, holdout.users)
    asked = HoldOut(users, histories, holdout.relevant, holdout.dropped_new_items)
    return evaluate(lambda batch: model.predict_batch(model.signature.decode(batch)),
                    asked, catalog_size=catalog_size, k=k)


def _register(registry: Registry, name: str, candidate: Candidate, result: TrainResult,
              config: TrainConfig, tags: dict[str, Any],
              extra_metrics: dict[str, float] | None = None) -> ModelVersion:
    train, test = result.split.train, result.split.test
    length = config.history_length
    return registry.register(
        name, candidate.model, flavor="factors",
        sample_input={"history": result.holdout.histories[:2]},
        reference_data={"history": history_sample(train, length, PROFILE_ROWS, config.seed)},
        metrics={**candidate.metrics, **(extra_metrics or {}),
                 "train_seconds": round(candidate.train_seconds, 3),
                 "train_cpu_seconds": round(candidate.train_cpu_seconds, 3)},
        params={**candidate.params, "history_length": length, "k": config.k,
                "top_k": candidate.model.top_k},
        tags={
            **tags,
            "dataset": config.dataset,
            "split": result.split.description,
            "train_start": train["ts"].min().isoformat(),
            "train_end": train["ts"].max().isoformat(),
            "test_start": test["ts"].min().isoformat(),
            "test_end": test["ts"].max().isoformat(),
            "train_events": len(train),
            "items": len(candidate.model.item_ids),
            "dropped_new_items": result.holdout.dropped_new_items,
        },
        description=f"{candidate.label} recommender on {config.dataset}",
    )
