"""Reports: what the models did over a time window, as one self-contained HTML file.

For each model seen in the prediction log (or the one asked for): calls and latency
over time (exact, from `mp_traffic`), the distribution of its outputs over time and
its inputs' drift against the profile stored at registration (from the sampled rows
in `mp_predictions`), every registered version with its metrics, and the live quality
of the versions that served, on the predictions that got feedback (`mp_feedback`). `summary()` is
the same in brief, as JSON, for a webhook. `report_job` is the scheduler's job.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from modelport.errors import InvalidInput, NotFound
from modelport.monitoring.agreement import ShadowAgreement, shadow_agreement
from modelport.monitoring.drift import MIN_ROWS, FeatureDrift, drift
from modelport.monitoring.feedback import FeedbackStore
from modelport.monitoring.logstore import Count, LogStore, percentile
from modelport.monitoring.quality import LiveQuality, quality_for
from modelport.registry import ModelVersion, Registry
from modelport.settings import Settings

log = logging.getLogger("modelport.report")

MAX_SAMPLES = 20_000
"""Sampled rows read per model: plenty for drift, bounded for memory and time."""
MAX_DRIFT_VERSIONS = 3
STEPS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400)
MAX_BUCKETS = 72
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: datetime) -> datetime:
    """`24h`, `7d`, `30m`, `2w` (that long before `now`), `now`, or an ISO 8601 time
    (UTC when it names no zone)."""
    text = text.strip()
    if text == "now":
        return now
    duration = _DURATION.fullmatch(text)
    if duration:
        return now - timedelta(seconds=float(duration[1]) * _UNITS[duration[2]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{text!r} is neither a duration (24h, 7d, 30m) nor an ISO "
                           "8601 time (2025-01-31 or 2025-01-31T08:00:00+00:00)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def window(since: str = "24h", until: str | None = None, now: datetime | None = None
           ) -> tuple[datetime, datetime]:
    """[since, until) from command-line words; `until` defaults to now."""
    now = now or datetime.now(UTC)
    end = parse_time(until, now) if until else now
    start = parse_time(since, end)
    if start >= end:
        raise InvalidInput(f"the window is empty: since {start.isoformat()} is not before "
                           f"until {end.isoformat()}")
    return start, end


@dataclass
class VersionDrift:
    version: int
    samples: int
    features: list[FeatureDrift]

    @property
    def max_psi(self) -> float | None:
        """The largest PSI from rows enough to believe it (`MIN_ROWS`): a PSI from a
        handful of sampled rows is noise and must not be a report's headline."""
        values = [f.headline for f in self.features
                  if f.method == "psi" and f.headline is not None]
        return max(values) if values else None

    @property
    def max_js(self) -> float | None:
        """The same for the Jensen-Shannon distances (set-valued features)."""
        values = [f.headline for f in self.features
                  if f.method == "js" and f.headline is not None]
        return max(values) if values else None

    @property
    def few_rows(self) -> bool:
        return self.samples < MIN_ROWS

    def named(self, level: str) -> list[str]:
        return [f.name for f in self.features if f.level == level]


@dataclass
class ModelReport:
    """One model's part of a report."""

    name: str
    buckets: list[datetime]
    step: int
    calls: dict[int, list[int]] = field(default_factory=dict)
    """Calls per bucket, by version."""
    latency: list[Count] = field(default_factory=list)
    """All of a bucket's calls (every version and source) merged."""
    total: Count = field(default_factory=Count)
    slices: dict[tuple[int, str], Count] = field(default_factory=dict)
    """Totals by (version, source)."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    """Sampled rows read (at most MAX_SAMPLES)."""
    sampled: int = 0
    """Sampled rows in the window (read or not)."""
    versions: list[ModelVersion] = field(default_factory=list)
    drift: list[VersionDrift] = field(default_factory=list)
    quality: list[LiveQuality] = field(default_factory=list)
    """Live metrics of the versions that served, newest version first."""
    notes: list[str] = field(default_factory=list)

    def bucket(self, moment: datetime) -> int:
        start = self.buckets[0]
        return min(int((moment - start).total_seconds() // self.step), len(self.buckets) - 1)

    @property
    def served(self) -> list[int]:
        return sorted({v for v, _ in self.slices}, reverse=True)


@dataclass
class Report:
    since: datetime
    until: datetime
    models: list[ModelReport]
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    shadows: list[ShadowAgreement] = field(default_factory=list)
    """How often each shadow agreed with the model it shadowed (monitoring.agreement)."""

    @property
    def sampled_share(self) -> float | None:
        """Share of predicted rows whose inputs were sampled (as logged, whatever the
        rate is now)."""
        rows = sum(m.total.rows for m in self.models)
        return sum(m.sampled for m in self.models) / rows if rows else None

    def summary(self, path: Path | None = None) -> dict[str, Any]:
        """The report in brief, JSON-ready: what a webhook receives."""
        models = [_model_summary(m) for m in self.models]
        return {
            "text": _headline(self, models),
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "generated_at": self.generated_at.isoformat(),
            "report": str(path) if path else None,
            "models": models,
            "shadows": [s.summary() for s in self.shadows],
        }


def _model_summary(m: ModelReport) -> dict[str, Any]:
    by_version: dict[int, Count] = {}
    for (version, _), count in m.slices.items():
        by_version.setdefault(version, Count()).merge(count)
    registered = {v.version: v for v in m.versions}
    newest = m.drift[0] if m.drift else None  # drift is listed newest version first
    return {
        "name": m.name,
        "calls": m.total.calls, "rows": m.total.rows, "errors": m.total.errors,
        "latency_ms": {"p50": _round(percentile(m.total.buckets, 0.5), 1),
                       "p95": _round(percentile(m.total.buckets, 0.95), 1)},
        "versions": [{"version": v, "calls": c.calls, "rows": c.rows,
                      "aliases": registered[v].aliases if v in registered else [],
                      "metrics": registered[v].metrics if v in registered else {}}
                     for v, c in sorted(by_version.items(), reverse=True)],
        "drift": None if newest is None else {
            "version": newest.version, "samples": newest.samples,
            "max_psi": _round(newest.max_psi, 4), "max_js": _round(newest.max_js, 4),
            "min_rows": MIN_ROWS, "few_rows": newest.few_rows,
            "drift": newest.named("drift"), "shift": newest.named("shift")},
        "quality": [{"version": q.version, "metric": q.metric, "value": _round(q.value, 4),
                     "labelled": q.rows} for q in m.quality],
    }


def _headline(report: Report, models: list[dict[str, Any]]) -> str:
    parts = []
    for m in models:
        p95 = m["latency_ms"]["p95"]
        text = f"{m['name']}: {m['calls']:,} calls" + (f", p95 {p95:g} ms" if p95 else "")
        if m["errors"]:
            text += f", {m['errors']:,} errors"
        if m["drift"] and m["drift"]["drift"]:
            text += f", drift in {', '.join(m['drift']['drift'][:5])}"
        elif m["drift"] and m["drift"]["shift"]:
            text += f", shift in {', '.join(m['drift']['shift'][:5])}"
        elif m["drift"] and m["drift"]["few_rows"]:
            text += (f", drift not judged ({m['drift']['samples']} sampled rows, "
                     f"fewer than {MIN_ROWS})")
        judged = [q for q in m["quality"] if q["value"] is not None]
        if judged:  # the newest version's first metric: the one most likely asked about
            q = judged[0]
            text += (f", {q['metric']} {q['value']:g} on {q['labelled']:,} labelled "
                     f"(version {q['version']})")
        parts.append(text)
    span = f"{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC"
    return f"modelport report {span}: " + ("; ".join(parts) or "no predictions")


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# --- building a report ------------------------------------------------------------------


def step_for(since: datetime, until: datetime) -> int:
    """Bucket width: the finest that keeps a chart to at most MAX_BUCKETS bars."""
    seconds = (until - since).total_seconds()
    return next((s for s in STEPS if seconds / s <= MAX_BUCKETS), STEPS[-1])


def _buckets(since: datetime, until: datetime, step: int) -> list[datetime]:
    start = math.floor(since.timestamp() / step) * step  # aligned: 10:00, not 10:07
    end = until.timestamp()
    return [datetime.fromtimestamp(t, UTC) for t in range(start, math.ceil(end), step)] or [
        datetime.fromtimestamp(start, UTC)]


def build_report(store: LogStore, registry: Registry | None, since: datetime,
                 until: datetime, *, model: str | None = None,
                 max_samples: int = MAX_SAMPLES) -> Report:
    """Read the window from the prediction log (and the registry) into a Report."""
    traffic = store.traffic(since, until, model)
    names = sorted({row[1] for row in traffic} | ({model} if model else set()))
    step = step_for(since, until)
    reports = []
    for name in names:
        m = ModelReport(name, _buckets(since, until, step), step)
        m.latency = [Count() for _ in m.buckets]
        for minute, _, version, source, count in (r for r in traffic if r[1] == name):
            i = m.bucket(minute)
            m.calls.setdefault(version, [0] * len(m.buckets))[i] += count.calls
            m.latency[i].merge(count)
            m.total.merge(count)
            m.slices.setdefault((version, source), Count()).merge(count)
        m.samples, m.sampled = store.samples(name, since, until, max_samples)
        _add_registry(m, registry)
        _add_quality(m, store, since, until)
        reports.append(m)
    shadows = shadow_agreement(store, since, until)
    if model:
        shadows = [s for s in shadows if s.model == model]
    return Report(since, until, reports, shadows=shadows)


def _add_registry(m: ModelReport, registry: Registry | None) -> None:
    if registry is None:
        return
    try:
        m.versions = registry.list_versions(m.name)
    except NotFound:
        m.notes.append(f"{m.name} is not in the registry (deleted?): no metrics, no drift")
        return
    registered = {v.version: v for v in m.versions}
    seen = sorted({s["version"] for s in m.samples}, reverse=True)
    for version in seen[:MAX_DRIFT_VERSIONS]:
        record = registered.get(version)
        if record is None:
            m.notes.append(f"version {version} is no longer registered: no drift for it")
            continue
        inputs = [s["inputs"] for s in m.samples if s["version"] == version]
        m.drift.append(VersionDrift(version, len(inputs), drift(record.profile, inputs)))
    if len(seen) > MAX_DRIFT_VERSIONS:
        m.notes.append(f"drift shown for the {MAX_DRIFT_VERSIONS} newest versions of "
                       f"{len(seen)} that served")


def _add_quality(m: ModelReport, store: LogStore, since: datetime, until: datetime) -> None:
    registered = {v.version: v for v in m.versions}
    labels = FeedbackStore(store)  # the log's engine: closed with it
    for version in m.served:
        if version in registered:
            m.quality += [q for q in quality_for(labels, registered[version], since, until)
                          if q.rows]


def generate(settings: Settings, since: datetime, until: datetime, out: Path, *,
             model: str | None = None) -> Report:
    """Build the report from the settings' log and registry and write it to `out`."""
    from modelport.jobs.report_html import render_html  # matplotlib: only when reporting

    store = LogStore(settings.resolved_log_url)
    try:
        with Registry(settings=settings) as registry:
            report = build_report(store, registry, since, until, model=model)
    finally:
        store.close()
    write_atomically(out, render_html(report))
    return report


def write_atomically(path: Path, text: str) -> None:
    """A reader (a web server publishing reports) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


Job = Callable[[], Awaitable[None]]


def report_job(settings: Settings, *, model: str | None = None, period: str = "24h",
               out: str | Path = "reports/report-{until:%Y-%m-%d}.html",
               webhook: str | None = None) -> Job:
    """A job for the scheduler: each run reports on the `period` before it, writes
    `out` (formatted with `until`, the run's time, and `model`) and posts the summary
    to `webhook`, if any. A webhook that keeps failing fails the run."""
    parse_time(period, datetime.now(UTC))  # a bad period fails when scheduled, not at 3 am

    async def run() -> None:
        since, until = window(period)
        path = Path(str(out).format(until=until, model=model or "all"))
        report = await asyncio.to_thread(generate, settings, since, until, path, model=model)
        log.info("report written to %s", path)
        if webhook:
            from modelport.jobs.webhook import post_json

            await post_json(webhook, report.summary(path))

    run.__name__ = run.__qualname__ = f"report_{model or 'all'}"
    return run
