"""The guard: watch a just-promoted version's live metrics, roll the alias back on a breach.

A guard is a list of bounds (`error_rate<1%,p99_ms<50`) and a window. From the moment
the alias moves until the window ends, it reads the version's live metrics (see
`modelport.promotion.live`: the prediction log every replica writes to) every
`every_s` seconds. The first bound broken rolls the alias back to where it pointed
before, recorded in the alias history with actor `guard` and the metric's value as the
reason; a window that passes without a breach is recorded too (`hold`). Rates and
quantiles are judged once the version has answered `min_requests` calls (one failed
call out of two is not a 50% error rate worth acting on); a floor on a count that
only grows (`requests>=100`) is judged at the window's end.

The guard never undoes a move it did not watch: when the alias points elsewhere (a
person moved it), it stops and says so. Its state is the registry's and the log's, so
any process can run it: `modelport promote` in the foreground, the admin API in the
server, or a retraining job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from modelport.errors import Conflict, NotFound
from modelport.monitoring.logstore import LogStore
from modelport.promotion.bounds import Bound, parse_guard
from modelport.promotion.live import METRICS, LiveWindow, show
from modelport.registry import Registry

log = logging.getLogger("modelport.guard")

ACTOR = "guard"
Outcome = Literal["watching", "held", "rolled_back", "superseded", "stopped"]


@dataclass
class GuardResult:
    outcome: Outcome
    reason: str
    values: dict[str, float | None] = field(default_factory=dict)
    rolled_back_to: int | None = None


@dataclass
class Breach:
    bound: Bound
    value: float


class Guard:
    """Watch `name:version` behind `name@alias` for `window_s` seconds.

    >>> guard = Guard(registry, "m", "production", 3, "error_rate<1%", 600)
    >>> guard.begin()               # before the alias moves: counts so far are not its
    >>> registry.set_alias("m", "production", 3)
    >>> guard.watch()               # blocks up to the window; GuardResult
    """

    def __init__(self, registry: Registry, name: str, alias: str, version: int,
                 bounds: str | list[Bound], window_s: float, *, every_s: float | None = None,
                 min_requests: int = 10, store: LogStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.name, self.alias, self.version = name, alias, version
        self.bounds = parse_guard(bounds, set(METRICS)) if isinstance(bounds, str) else bounds
        self.window_s = window_s
        settings = registry.settings
        self.every_s = every_s or min(settings.monitoring.flush_interval_s, window_s / 4)
        self.min_requests = min_requests
        self._own_store = store is None
        self.store = store or LogStore(settings.resolved_log_url)
        self.clock = clock
        self.window: LiveWindow | None = None
        self.result = GuardResult("watching", f"watching {self.describe()}")
        self.stop_event = threading.Event()
        self.calls = 0
        self._started = 0.0

    def describe(self) -> str:
        return f"{','.join(str(b) for b in self.bounds)} for {self.window_s:g}s"

    def begin(self) -> None:
        """Note the version's counts so far: call it just before the alias moves."""
        window = LiveWindow(self.store, self.name, self.version, datetime.now(UTC))
        window.baseline = window.counted()
        self.window = window
        self._started = self.clock()

    def check(self, *, final: bool = False) -> tuple[Breach | None, dict[str, float | None]]:
        """Read every bounded metric once; the first bound broken, and the values."""
        assert self.window is not None, "begin() first"
        window = LiveWindow(self.store, self.name, self.version, self.window.since,
                            self.window.baseline)
        values = {b.metric: METRICS[b.metric].read(window) for b in self.bounds}
        calls = self.calls = window.traffic().calls
        for bound in self.bounds:
            value, metric = values[bound.metric], METRICS[bound.metric]
            if value is None or (metric.rate and calls < self.min_requests):
                continue
            if metric.grows and bound.lower and not final:
                continue
            if not bound.holds(value):
                return Breach(bound, value), values
        return None, values

    def watch(self) -> GuardResult:
        """Check every `every_s` until the window ends, a bound breaks or `stop()`."""
        if self.window is None:
            self.begin()
        try:
            self.result = self._watch()
        finally:
            if self._own_store:
                self.store.close()
        log.info("guard of %s@%s (v%d): %s", self.name, self.alias, self.version,
                 self.result.reason)
        return self.result

    def stop(self) -> None:
        self.stop_event.set()

    def _watch(self) -> GuardResult:
        end = self._started + self.window_s
        while True:
            left = end - self.clock()
            final = left <= 0
            if not final and self.stop_event.wait(min(self.every_s, left)):
                return GuardResult("stopped", f"stopped before its window ended "
                                              f"({self.describe()})")
            moved = self._moved()
            if moved is not None:
                return moved
            final = final or self.clock() >= end
            breach, values = self.check(final=final)
            if breach is not None:
                return self._roll_back(breach, values)
            self.result.values = values
            if final:
                return self._hold(values)

    def _moved(self) -> GuardResult | None:
        try:
            current: int | None = self.registry.get_alias(self.name, self.alias)
        except NotFound:
            current = None
        if current == self.version:
            return None
        return GuardResult("superseded", f"{self.name}@{self.alias} was moved to "
                                         f"{current} by someone else; the guard stopped")

    def _roll_back(self, breach: Breach, values: dict[str, float | None]) -> GuardResult:
        calls = self.calls
        seconds = self.clock() - self._started
        reason = (f"guard: {show(breach.bound.metric, breach.value)} broke {breach.bound} "
                  f"after {seconds:.0f}s of {self.window_s:g}s"
                  + (f" ({calls} requests)" if calls else ""))
        reason = f"{reason}; " + ", ".join(show(k, v) for k, v in values.items())
        try:
            back = self.registry.rollback(self.name, self.alias, actor=ACTOR, reason=reason,
                                          expect=self.version)
        except Conflict as exc:
            return GuardResult("superseded", f"{reason}, but not rolled back: {exc}", values)
        log.warning("%s@%s rolled back from %d to %d: %s", self.name, self.alias,
                    self.version, back.version, reason)
        return GuardResult("rolled_back", reason, values, back.version)

    def _hold(self, values: dict[str, float | None]) -> GuardResult:
        reason = (f"guard: held for {self.window_s:g}s: "
                  + ", ".join(show(k, v) for k, v in values.items())
                  + f" within {','.join(str(b) for b in self.bounds)}")
        self.registry.record_decision(self.name, self.alias, "hold", current=self.version,
                                      candidate=self.version, actor=ACTOR, reason=reason)
        return GuardResult("held", reason, values)
