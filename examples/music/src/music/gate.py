"""Registering a trained recommender, and the gate that decides if it serves.

Both models of a training run are registered (artifacts: factor arrays and id maps, no
pickle): ALS as `<name>`, the popularity baseline as `<name>-popularity`, each with its
hold-out metrics and their 95% bootstrap intervals, the number of users, parameters,
the split and the data's time range as tags.

The gate moves `<name>@production` to the new ALS version only on evidence that it is
better on recall@k, by more than the noise of the users who happened to be held out:

- against the current production version, re-scored on the candidate's own hold-out
  through its registered serving path (load, validate, predict), so both face the
  same users and the same future; or, with no production version yet, against the
  popularity baseline on that hold-out (a recommender that loses to "the most played"
  should not serve). Each user's recall is paired: the candidate is promoted when the
  95% bootstrap interval of the mean per-user difference lies above 0;
- unless production may have been trained on events of that test set (its
  `train_end` tag is after the test start, and it was not trained on the very same
  training part): re-scoring would flatter it, so its recorded recall (from its own
  hold-out) is the bar, and the candidate's own interval must lie above it;
- with fewer evaluation users than `TrainConfig.min_eval_users`, nothing is decided:
  the version is registered with `gate: undecided` and production stays as it is.

The decision goes through modelport's promotion (`modelport.promotion.promote`, with
this module's verdict as the gate): a refusal is recorded in the alias history
(`refuse`), a promotion is the alias move, and a guard can watch it. The nightly
retraining (`music.nightly`) runs it as a modelport retrain job.

The comparison is recorded on the version: tags `gate` (promoted | refused |
undecided), `gate_reason` and `gate_against`; metrics `gate_recall@k` and
`gate_bar_recall@k` (both values), `gate_difference_low`/`_high` (the interval, when
paired) and `gate_users`. The alias move's `reason` in the audit trail is the same
sentence, and so is the return value's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from modelport import ModelVersion, NotFound, Registry
from modelport.promotion import Decided, GuardResult, Promotion, Verdict, promote

from music.metrics import Scores, paired_interval, score_users
from music.split import HoldOut, recent_histories
from music.train import Candidate, TrainConfig, TrainResult, history_sample

ALIAS = "production"
PROFILE_ROWS = 1000  # users whose histories make the drift reference profile


@dataclass
class Evidence:
    """What the gate compared: the candidate's recall@k and the bar's, on `users`."""

    against: str
    """What the bar is, e.g. "v3 on this hold-out" or "popularity baseline; …"."""
    candidate: float
    bar: float
    users: int
    low: float | None = None
    """The 95% interval of the per-user difference (None when the bar is a record)."""
    high: float | None = None
    bar_version: int | None = None
    candidate_interval: tuple[float, float] = (float("nan"), float("nan"))
    """The candidate's own 95% interval: what must clear a recorded bar."""


@dataclass
class Decision:
    promoted: bool
    reason: str
    version: int
    """The ALS version just registered."""
    baseline_version: int
    previous: int | None
    """The production version before (None if there was none)."""
    verdict: str = "refused"
    """promoted, refused, or undecided (too few evaluation users)."""
    evidence: Evidence | None = None
    promotion: Promotion | None = None
    """modelport's promotion of the version (its guard, when one was asked for)."""

    def watch(self) -> GuardResult | None:
        """Run the promotion's guard through its window (None without one)."""
        return self.promotion.watch() if self.promotion is not None else None


def publish(registry: Registry, result: TrainResult, config: TrainConfig, *,
            guard: str | None = None, window: str = "10m") -> Decision:
    """Register the baseline and the ALS model, then apply the gate (see the module)
    through modelport's promotion: a refusal is recorded in the alias history as
    `refuse`, a promotion as the move, with the same sentence; with `guard` (and a
    production version to fall back to) the caller watches it with `decision.watch()`."""
    decision = register_candidate(registry, result, config)
    p = promote(registry, config.name, decision.version, alias=ALIAS,
                gate=Decided(verdict_of(decision)),
                guard=guard if decision.previous is not None else None,
                window=window if guard and decision.previous is not None else None)
    decision.promotion = p
    return decision


def verdict_of(decision: Decision) -> Verdict:
    """The music gate's word as modelport's."""
    word = {"promoted": "promote", "refused": "refuse"}.get(decision.verdict, "undecided")
    return Verdict(word, decision.reason)  # type: ignore[arg-type]


def register_candidate(registry: Registry, result: TrainResult,
                       config: TrainConfig) -> Decision:
    """Register the baseline and the ALS model with the gate's evidence and verdict
    (tags and metrics); move nothing."""
    recall = f"recall@{config.k}"
    baseline = _register(registry, f"{config.name}-popularity", result.baseline, result,
                         config, {"kind": "popularity"})
    previous, evidence = _compare(registry, result, config)
    users = len(result.holdout.users)
    if result.too_few_users:
        verdict = "undecided"
        reason = (f"not decided: {users} evaluation users, fewer than "
                  f"{result.min_eval_users}: {recall} {evidence.candidate:.4f} vs "
                  f"{evidence.bar:.4f} ({evidence.against}) is too noisy to promote on")
    else:
        verdict, reason = _verdict(recall, evidence)
    extra_metrics = {f"baseline_{key}": value for key, value in result.baseline.metrics.items()
                     if key != "users"}
    extra_metrics |= {f"gate_{recall}": evidence.candidate, f"gate_bar_{recall}": evidence.bar,
                      "gate_users": evidence.users}
    if evidence.low is not None and evidence.high is not None:
        extra_metrics |= {"gate_difference_low": evidence.low,
                          "gate_difference_high": evidence.high}
    version = _register(registry, config.name, result.als, result, config, {
        "kind": "als",
        "gate": verdict,
        "gate_reason": reason,
        "gate_against": evidence.against,
    }, extra_metrics)
    return Decision(verdict == "promoted", reason, version.version, baseline.version,
                    previous, verdict, evidence)


def _verdict(recall: str, e: Evidence) -> tuple[str, str]:
    """(promoted | refused, the sentence that says why)."""
    values = f"{recall} {e.candidate:.4f} vs {e.bar:.4f} ({e.against})"
    if e.low is not None and e.high is not None:
        promoted = e.low > 0
        where = ("above 0" if promoted else "below 0" if e.high < 0 else "includes 0")
        return ("promoted" if promoted else "refused",
                f"{values}: difference {e.candidate - e.bar:+.4f}, 95% interval "
                f"[{e.low:+.4f}, {e.high:+.4f}] over {e.users} users, {where}")
    # a recorded bar (another hold-out): the candidate's own interval must clear it
    low, high = e.candidate_interval
    promoted = low > e.bar
    return ("promoted" if promoted else "refused",
            f"{values}: the candidate's 95% interval [{low:.4f}, {high:.4f}] over {e.users} "
            f"users is {'above' if promoted else 'not above'} the bar")


def _compare(registry: Registry, result: TrainResult,
             config: TrainConfig) -> tuple[int | None, Evidence]:
    """(production version, the evidence: the candidate against the bar)."""
    recall = f"recall@{config.k}"
    candidate = result.als.scores
    assert candidate is not None
    assert result.baseline.scores is not None
    users = candidate.users
    own = (result.als.metrics[f"{recall}_low"], result.als.metrics[f"{recall}_high"])
    try:
        current = registry.resolve(f"{config.name}@{ALIAS}")
    except NotFound:
        return None, _paired(candidate, result.baseline.scores,
                             "popularity baseline; no production version yet", None, config)
    test_start = result.split.test["ts"].min()
    recorded = current.metrics.get(recall)
    bar = float(recorded) if recorded is not None else float("-inf")
    if current.flavor != "factors":
        return current.version, Evidence(
            f"v{current.version} as recorded; a {current.flavor} model is not re-scored",
            float(candidate.recall.mean()), bar, users, bar_version=current.version,
            candidate_interval=own)
    if not _fair_to_rescore(current, result, config, test_start):
        what = (f"v{current.version} as recorded on its own hold-out: it may have been "
                "trained on events of this test set") if recorded is not None else (
                f"v{current.version} has no {recall} recorded and saw the test window")
        return current.version, Evidence(what, float(candidate.recall.mean()), bar, users,
                                         bar_version=current.version, candidate_interval=own)
    scores = rescore(registry, current, result.split.train, result.holdout, result.catalog_size,
                     config.k)
    return current.version, _paired(candidate, scores, f"v{current.version} on this hold-out",
                                    current.version, config)


def _paired(candidate: Scores, bar: Scores, against: str, version: int | None,
            config: TrainConfig) -> Evidence:
    low, high = paired_interval(candidate.recall, bar.recall, seed=config.seed)
    return Evidence(against, float(candidate.recall.mean()), float(bar.recall.mean()),
                    candidate.users, low, high, version)


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
            holdout: HoldOut, catalog_size: int, k: int) -> Scores:
    """A registered version's per-user scores on `holdout`, asked as the service asks it."""
    model = registry.load(version)
    length = version.signature.inputs[0].shape[0]
    # its own history length: the version may predate a change of H
    users, histories = recent_histories(train, length, holdout.users)
    asked = HoldOut(users, histories, holdout.relevant, holdout.dropped_new_items)
    return score_users(lambda batch: model.predict_batch(model.signature.decode(batch)),
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
