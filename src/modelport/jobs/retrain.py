"""Retraining: run the user's trainer, register what it produces, gate it against
production, promote it under a guard, and record every decision in the registry.

```yaml
retrain:
  - name: nightly-cancer
    model: cancer
    entry_point: mytrainer:train      # or command: [python, train.py]
    gate: auc>=production
    guard: error_rate<1%,p99_ms<50
    window: 10m
    schedule: "0 3 * * *"             # and/or
    drift: {threshold: 0.25, check: "*/15 * * * *", window: 24h}
```

An entry point is called with a `RetrainContext` (the registry, the model, the alias,
why it runs, production's version) and returns the version it registered, or a
`Trained` that carries a gate of its own (one that knows the run's hold-out). A
command registers its version itself (`modelport models register …`); the newest
version after it ran is the candidate. Then `modelport.promotion.promote` decides:
a refusal is recorded as `refuse`, a promotion as `set` with the gate's reason, and
the guard's rollback or hold follows. Actor: `retrain:NAME`.

The drift trigger looks at the production version's logged inputs over `window`:
the largest PSI among features with enough rows (`modelport.monitoring.drift`) above
`threshold` retrains, at most once per `window`.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from modelport.config import RetrainConfig, ServiceConfig
from modelport.errors import ConfigError, ModelportError, NotFound
from modelport.jobs.scheduler import Scheduler
from modelport.monitoring.drift import drift
from modelport.monitoring.logstore import LogStore
from modelport.pipeline.pipeline import import_object
from modelport.promotion import (
    Gate,
    GuardResult,
    MetricGate,
    Verdict,
    parse_duration,
    parse_guard,
    production_of,
    promote,
)
from modelport.promotion.live import METRICS
from modelport.registry import ModelVersion, Registry

log = logging.getLogger("modelport.retrain")

DRIFT_SAMPLES = 20_000


class TrainerError(ModelportError):
    """The trainer failed or produced nothing: nothing was promoted."""


@dataclass
class RetrainContext:
    """What a trainer is handed."""

    registry: Registry
    model: str
    alias: str
    trigger: str
    """`schedule`, `manual`, or `drift: …` with the score."""
    production: ModelVersion | None


@dataclass
class Trained:
    """A trainer's answer when it brings its own gate."""

    version: int | ModelVersion
    gate: Gate | None = None


@dataclass
class RetrainOutcome:
    trigger: str
    version: int
    promoted: bool
    reason: str
    previous: int | None
    verdict: Verdict | None = None
    guard: GuardResult | None = None

    @property
    def kept(self) -> bool:
        """Whether the candidate serves at the end (promoted and not rolled back)."""
        return self.promoted and (self.guard is None or self.guard.outcome != "rolled_back")


Trainer = Callable[[RetrainContext], "int | ModelVersion | Trained"]
DriftScore = Callable[[Registry, LogStore, ModelVersion, datetime, datetime], "float | None"]


def max_psi(registry: Registry, store: LogStore, production: ModelVersion, since: datetime,
            until: datetime) -> float | None:
    """The largest PSI among production's features with enough logged rows."""
    rows, _ = store.samples(production.name, since, until, DRIFT_SAMPLES)
    inputs = [r["inputs"] for r in rows if r["version"] == production.version]
    scores = [f.psi for f in drift(production.profile, inputs)
              if f.psi is not None and f.level not in ("few rows", "n/a")]
    return max(scores, default=None)


class Retrainer:
    """One retraining job: `run(trigger)` once, or on a scheduler (`add_to`)."""

    def __init__(self, registry: Registry, config: RetrainConfig, *,
                 trainer: Trainer | None = None, gate: Gate | None = None,
                 drift_score: DriftScore = max_psi, every_s: float | None = None) -> None:
        self.registry, self.config = registry, config
        where = f"retrain {config.name!r}"
        try:
            self.gate = gate or (MetricGate(config.gate) if config.gate else None)
            if config.guard is not None:
                parse_guard(config.guard, set(METRICS))
            parse_duration(config.window, f"{where}: window")
            self.drift_window = parse_duration(config.drift.window, f"{where}: drift window") \
                if config.drift else 0.0
        except ModelportError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if trainer is None and config.entry_point is not None:
            trainer = import_object(config.entry_point, f"{where}: entry_point")
        if trainer is None and config.command is None:
            raise ConfigError(f"{where}: no trainer: give entry_point (module:function) or "
                              "command")
        self.trainer = trainer
        self.drift_score = drift_score
        self.every_s = every_s
        self.last_drift_run: float | None = None
        self.last: RetrainOutcome | None = None

    @property
    def actor(self) -> str:
        return f"retrain:{self.config.name}"

    def run(self, trigger: str = "manual") -> RetrainOutcome:
        """Train, register, gate, promote and guard (blocks through the guard's window)."""
        c = self.config
        production = production_of(self.registry, c.model, c.alias)
        trained = self._train(RetrainContext(self.registry, c.model, c.alias, trigger,
                                             production))
        version = trained.version if isinstance(trained.version, int) else \
            trained.version.version
        guard = c.guard if production is not None else None  # nothing to roll back to
        p = promote(self.registry, c.model, version, alias=c.alias,
                    gate=trained.gate or self.gate, guard=guard,
                    window=c.window if guard else None, min_requests=c.min_requests,
                    every_s=self.every_s, reason=f"{self.actor} ({trigger})", actor=self.actor)
        if not p.moved:
            assert p.verdict is not None
            reason = f"gate {p.verdict.word}: {p.verdict.reason}"
            outcome = RetrainOutcome(trigger, version, False, reason, p.previous, p.verdict)
        else:
            result = p.watch()
            reason = (p.verdict.reason if p.verdict else "no gate") + (
                f"; {result.reason}" if result else "")
            outcome = RetrainOutcome(trigger, version, True, reason, p.previous, p.verdict,
                                     result)
        log.info("%s: %s:%d %s: %s", self.actor, c.model, version,
                 "kept" if outcome.kept else "not kept", outcome.reason)
        self.last = outcome
        return outcome

    def _train(self, context: RetrainContext) -> Trained:
        c = self.config
        before = self._latest()
        if self.trainer is not None:
            answer = self.trainer(context)
            if isinstance(answer, Trained):
                return answer
            if isinstance(answer, int | ModelVersion):
                return Trained(answer)
            raise TrainerError(f"retrain {c.name!r}: the trainer returned "
                               f"{type(answer).__name__}, not the version it registered")
        assert c.command is not None
        done = subprocess.run(c.command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            raise TrainerError(f"retrain {c.name!r}: {' '.join(c.command)} exited "
                               f"{done.returncode}: {tail[0]}")
        after = self._latest()
        if after is None or after == before:
            raise TrainerError(f"retrain {c.name!r}: {' '.join(c.command)} registered no "
                               f"new version of {c.model}")
        return Trained(after)

    def _latest(self) -> int | None:
        try:
            return max(v.version for v in self.registry.list_versions(self.config.model))
        except (NotFound, ValueError):
            return None

    def drift_check(self, now: datetime | None = None) -> RetrainOutcome | None:
        """Retrain when production's drift is above the threshold (and was not retrained
        for drift within the drift window)."""
        c = self.config
        assert c.drift is not None
        clock = time.monotonic()
        if self.last_drift_run is not None and clock - self.last_drift_run < self.drift_window:
            return None
        production = production_of(self.registry, c.model, c.alias)
        if production is None:
            return None
        until = now or datetime.now(UTC)
        store = LogStore(self.registry.settings.resolved_log_url)
        try:
            score = self.drift_score(self.registry, store, production,
                                     until - timedelta(seconds=self.drift_window), until)
        finally:
            store.close()
        if score is None or score <= c.drift.threshold:
            log.info("%s: drift %s, threshold %g: not retraining", self.actor,
                     "n/a" if score is None else f"{score:.3f}", c.drift.threshold)
            return None
        self.last_drift_run = clock
        return self.run(f"drift: {score:.3f} > {c.drift.threshold:g} on v{production.version}")

    def add_to(self, scheduler: Scheduler) -> list[str]:
        """Its scheduled jobs: retraining on `schedule`, a drift check on `drift.check`."""
        names = []
        if self.config.schedule:
            scheduler.add(self.config.name, self.config.schedule, self._async(self.run,
                                                                                "schedule"))
            names.append(self.config.name)
        if self.config.drift:
            name = f"{self.config.name}-drift"
            scheduler.add(name, self.config.drift.check, self._async(self.drift_check))
            names.append(name)
        return names

    @staticmethod
    def _async(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        async def run() -> None:
            await asyncio.to_thread(fn, *args)
        return run


def add_retrain_jobs(scheduler: Scheduler, registry: Registry,
                     config: ServiceConfig) -> list[Retrainer]:
    """A Retrainer per `retrain:` entry, its jobs on `scheduler`."""
    jobs = []
    for entry in config.retrain:
        if not entry.schedule and not entry.drift:
            raise ConfigError(f"retrain {entry.name!r}: nothing triggers it: give schedule "
                              "(cron) or drift")
        job = Retrainer(registry, entry)
        job.add_to(scheduler)
        jobs.append(job)
    return jobs
