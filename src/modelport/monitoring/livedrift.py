"""Live drift: each served version's input drift, recomputed every interval from the
prediction log and exported as Prometheus gauges.

Computed from the shared log, not from this process's memory: every replica reads the
same database, over the same window (the last `drift_window_s` ending at a whole
`drift_interval_s`), and the same rows of it (`LogStore.samples` spreads its reads by
row id, not at random), so every replica exports the same values and a dashboard may
take any one of them (`max by (model, version, feature)`). The cost is bounded: at
most `drift_max_rows` rows per version per interval, read and scored in a thread.

    watch = DriftWatch(store, metrics, served, settings.monitoring)
    await watch.start()       # every interval, in the background
    await watch.refresh()     # once, now (tests, an admin call)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from modelport.model import ModelVersion
from modelport.monitoring.drift import LEVELS, MIN_ROWS, FeatureDrift, drift
from modelport.monitoring.logstore import LogStore
from modelport.monitoring.metrics import Metrics
from modelport.settings import MonitoringSettings

log = logging.getLogger("modelport.drift")


@dataclass
class VersionWindow:
    """One served version's drift over one window."""

    model: str
    version: int
    since: datetime
    until: datetime
    rows: int
    """Sampled rows read (at most `drift_max_rows`)."""
    features: list[FeatureDrift]

    @property
    def flagged(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.flagged]


class DriftWatch:
    """Recompute the served versions' drift every interval; publish it as gauges.

    `served` names the versions to watch (the data plane's current ones); each is
    compared with the profile stored when it was registered."""

    def __init__(self, store: LogStore, metrics: Metrics,
                 served: Callable[[], list[ModelVersion]],
                 config: MonitoringSettings | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.served = served
        self.config = config or MonitoringSettings()
        self.clock: Callable[[], float] = time.time  # tests move it
        self.last: dict[tuple[str, int], VersionWindow] = {}
        self._published: set[tuple[str, str, str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    def window(self) -> tuple[datetime, datetime]:
        """[since, until): the window ends at the last whole interval, so replicas that
        compute within one interval of each other read the same rows."""
        step = self.config.drift_interval_s or 60.0
        end = math.floor(self.clock() / step) * step
        return (datetime.fromtimestamp(end - self.config.drift_window_s, UTC),
                datetime.fromtimestamp(end, UTC))

    def compute(self) -> list[VersionWindow]:
        """Each served version's drift now (blocking: reads the database)."""
        since, until = self.window()
        results = []
        for record in self.served():
            rows, _ = self.store.samples(record.name, since, until,
                                         self.config.drift_max_rows, record.version)
            inputs = [r["inputs"] for r in rows]
            results.append(VersionWindow(record.name, record.version, since, until,
                                         len(inputs), drift(record.profile, inputs)))
        return results

    def publish(self, results: list[VersionWindow]) -> None:
        """Set the gauges; a score from fewer than MIN_ROWS rows is not exported (an
        alert on it would fire on noise), nor are the series of versions no longer
        served (in one process; see `_forget`)."""
        m, now = self.metrics, self.clock()
        published: set[tuple[str, str, str, str]] = set()
        for w in results:
            version = str(w.version)
            m.drift_rows.labels(w.model, version).set(w.rows)
            m.drift_computed.labels(w.model).set(now)
            for f in w.features:
                if f.headline is None or f.level not in LEVELS:
                    continue
                m.drift_score.labels(w.model, version, f.name, f.method).set(f.headline)
                m.drift_level.labels(w.model, version, f.name).set(LEVELS[f.level])
                published.add((w.model, version, f.name, f.method))
        self._forget(self._published - published, {(w.model, str(w.version))
                                                   for w in results})
        self._published = published
        self.last = {(w.model, w.version): w for w in results}

    def _forget(self, gone: set[tuple[str, str, str, str]],
                current: set[tuple[str, str]]) -> None:
        # prometheus_client cannot remove a series in multiprocess mode (it warns);
        # there a series no longer computed keeps its last value until a restart
        if self.metrics.multiprocess_dir:
            return
        for model, version, feature, method in gone:
            with contextlib.suppress(KeyError):
                self.metrics.drift_score.remove(model, version, feature, method)
                self.metrics.drift_level.remove(model, version, feature)
        for model, version in {(k[0], k[1]) for k in gone} - current:
            with contextlib.suppress(KeyError):
                self.metrics.drift_rows.remove(model, version)

    async def refresh(self) -> list[VersionWindow]:
        """Compute and publish once, now."""
        results = await asyncio.to_thread(self.compute)
        before = {key: _flags(w) for key, w in self.last.items()}
        self.publish(results)
        for w in results:  # logged when the verdict changes, not every interval
            if w.rows >= MIN_ROWS and _flags(w) != before.get((w.model, w.version), set()):
                log.info("%s:%d input drift over %d rows: %s", w.model, w.version, w.rows,
                         _verdict(w) or "every feature stable")
        return results

    async def start(self) -> None:
        if self.config.drift_interval_s > 0 and self._task is None:
            self._stop = asyncio.Event()  # on the running loop, hence not in __init__
            self._task = asyncio.create_task(self._run(), name="drift-watch")

    async def stop(self) -> None:
        """Stop; a computation under way is let finish rather than cancelled, as its
        thread would go on reading from a store that the log is about to close."""
        if self._task is not None:
            assert self._stop is not None
            self._stop.set()
            await self._task
            self._task = None

    async def _run(self) -> None:
        assert self._stop is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.config.drift_interval_s)
            if self._stop.is_set():
                return
            try:
                await self.refresh()
            except Exception as exc:
                # monitoring must not stop a service: tried again next interval
                log.warning("live drift not computed, will retry: %s", exc)


def _flags(w: VersionWindow) -> set[tuple[str, str]]:
    return {(f.name, f.level) for f in w.flagged}


def _verdict(w: VersionWindow) -> str:
    return ", ".join(f"{f.name} {f.level} ({f.method} {f.score or 0:.3f})"
                     for f in w.flagged[:5])
