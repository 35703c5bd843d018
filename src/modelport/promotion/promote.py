"""Promotion as one act: gate the candidate, move the alias, guard it.

>>> p = promote(registry, "m", 3, gate="auc>=production", guard="error_rate<1%",
...             window="10m")
>>> p.moved, p.verdict.reason
>>> p.watch()        # blocks up to the window; rolls back on a breach

Each decision lands in the alias history: a gate's refusal (`refuse`, nothing moves),
the move (`set`, its reason naming the gate and the guard), the guard's rollback or
hold (actor `guard`).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelport.errors import Conflict, InvalidInput, NotFound
from modelport.promotion.bounds import parse_duration
from modelport.promotion.gate import Gate, MetricGate, Verdict
from modelport.promotion.guard import Guard, GuardResult
from modelport.registry import ModelVersion, Registry

DEFAULT_WINDOW = "10m"


@dataclass
class Promotion:
    name: str
    alias: str
    version: int
    previous: int | None
    moved: bool
    verdict: Verdict | None = None
    guard: Guard | None = None

    def watch(self) -> GuardResult | None:
        """Run the guard to the end of its window (None without a guard)."""
        if self.guard is None or not self.moved:
            return None
        return self.guard.watch()


def promote(registry: Registry, name: str, version: int, *, alias: str = "production",
            gate: str | Gate | None = None, guard: str | None = None,
            window: str | float | None = None, min_requests: int = 10,
            every_s: float | None = None, reason: str | None = None,
            actor: str | None = None, dry_run: bool = False) -> Promotion:
    """Gate `name:version` against `name@alias`, then point the alias at it.

    A refused (or undecided) candidate is recorded and the alias stays; `dry_run`
    only judges. With `guard`, the returned promotion's `watch()` watches the version
    for `window` (default 10 minutes) and rolls back on a breach."""
    candidate = registry.get_version(name, version)
    current = _current(registry, name, alias)
    production = registry.get_version(name, current) if current is not None else None
    watcher = None
    if guard is not None:
        if current is None:
            raise Conflict(f"{name}@{alias} points nowhere yet: a guard would have nothing "
                           "to roll back to; promote without --guard")
        seconds = parse_duration(window if window is not None else DEFAULT_WINDOW)
        watcher = Guard(registry, name, alias, version, guard, seconds, every_s=every_s,
                        min_requests=min_requests)
    elif window is not None:
        raise InvalidInput("a window is for a guard: give the guard's bounds too")
    verdict = None
    if gate is not None:
        check = MetricGate(gate) if isinstance(gate, str) else gate
        verdict = check(registry, candidate, production)
        if not verdict.passed:
            if not dry_run:
                registry.record_decision(name, alias, "refuse", current=current,
                                         candidate=version, actor=actor,
                                         reason=f"gate {verdict.word}: {verdict.reason}")
            return Promotion(name, alias, version, current, False, verdict)
    if dry_run:
        return Promotion(name, alias, version, current, False, verdict)
    if watcher is not None:
        watcher.begin()
    words = [w for w in (reason, verdict and f"gate: {verdict.reason}",
                         watcher and f"guard: {watcher.describe()}") if w]
    previous = registry.set_alias(name, alias, version, actor=actor,
                                  reason="; ".join(words) or None)
    return Promotion(name, alias, version, previous, True, verdict, watcher)


def _current(registry: Registry, name: str, alias: str) -> int | None:
    try:
        return registry.get_alias(name, alias)
    except NotFound:
        return None


def production_of(registry: Registry, name: str, alias: str) -> ModelVersion | None:
    current = _current(registry, name, alias)
    return registry.get_version(name, current) if current is not None else None
