"""Live metrics of one model version since its promotion, read from the prediction log.

Every replica adds its calls to the same per-minute rows of `mp_traffic` (see
`modelport.monitoring.logstore`), so these numbers cover the whole fleet, not one
process. A metric is a function of a `LiveWindow`, kept in a table by name: the guard
reads any metric in it, and other measures plug in with `register_metric`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from modelport.monitoring.agreement import version_agreement
from modelport.monitoring.feedback import FeedbackStore
from modelport.monitoring.logstore import Count, LogStore, percentile
from modelport.monitoring.quality import live_quality


@dataclass
class LiveWindow:
    """One version's traffic from `since` (its promotion) to now.

    Traffic is counted per minute; the counts the version already had in the minute
    of its promotion (`baseline`) are taken off, so only calls after it are judged."""

    store: LogStore
    model: str
    version: int
    since: datetime
    baseline: Count = field(default_factory=Count)
    _traffic: Count | None = None

    def traffic(self) -> Count:
        """Calls, errors and latency buckets of this version since `since` (read once)."""
        if self._traffic is None:
            self._traffic = minus(self.counted(), self.baseline)
        return self._traffic

    def counted(self) -> Count:
        """Everything counted for the version from the minute of `since` on."""
        start = self.since.replace(second=0, microsecond=0)
        total = Count()
        for _, _, version, _, count in self.store.traffic(
                start, datetime.now(UTC) + timedelta(minutes=1), self.model):
            if version == self.version:
                total.merge(count)
        return total


def minus(a: Count, b: Count) -> Count:
    return Count(a.calls - b.calls, a.rows - b.rows, a.errors - b.errors,
                 a.latency_ms_sum - b.latency_ms_sum,
                 [x - y for x, y in zip(a.buckets, b.buckets, strict=True)])


@dataclass(frozen=True)
class LiveMetric:
    """How to read one metric, and how the guard may judge it."""

    read: Callable[[LiveWindow], float | None]
    """The value so far; None when there is nothing to judge yet."""
    rate: bool = True
    """A rate or a quantile: judged only once the version has `min_requests` calls."""
    grows: bool = False
    """A count that only grows: a floor on it is judged at the window's end."""
    percent: bool = False
    """Shown as a percentage."""


def _error_rate(w: LiveWindow) -> float | None:
    t = w.traffic()
    return t.errors / t.calls if t.calls else None


def _quantile(q: float) -> Callable[[LiveWindow], float | None]:
    def read(w: LiveWindow) -> float | None:
        return percentile(w.traffic().buckets, q)
    return read


def _quality(metric: str) -> Callable[[LiveWindow], float | None]:
    """Live quality from feedback (labels joined with the logged predictions) since
    the promotion: None until a label arrived."""
    def read(w: LiveWindow) -> float | None:
        return live_quality(w.model, w.version, metric, w.since,
                            log=FeedbackStore(w.store)).value
    return read


def _agreement(w: LiveWindow) -> float | None:
    """Shadow agreement since the promotion, from the logged pairs: None until a row of
    the version was compared with another version's answer."""
    agreed, rows = version_agreement(w.store, w.model, w.version, w.since)
    return agreed / rows if rows else None


METRICS: dict[str, LiveMetric] = {
    "requests": LiveMetric(lambda w: float(w.traffic().calls), rate=False, grows=True),
    "errors": LiveMetric(lambda w: float(w.traffic().errors), rate=False, grows=True),
    "error_rate": LiveMetric(_error_rate, percent=True),
    "p50_ms": LiveMetric(_quantile(0.50)),
    "p95_ms": LiveMetric(_quantile(0.95)),
    "p99_ms": LiveMetric(_quantile(0.99)),
    "agreement": LiveMetric(_agreement, percent=True),
    **{name: LiveMetric(_quality(name)) for name in ("accuracy", "auc", "mae", "rmse")},
}
"""Live metrics by name: what a guard can bound. `requests` counts model calls (a
batch is one call), `error_rate` is the share of them that failed, `pNN_ms` are
latency quantiles within one bucket of the truth (the log's 1-2-5 buckets);
`agreement` is the share of the version's sampled rows that agreed with the other
version they were compared with, as primary or as shadow (`monitoring.agreement`);
`accuracy`, `auc`, `mae` and `rmse` are live quality on the feedback that arrived
since the promotion (docs/feedback.md), judged, like the rates, once the version has
`min_requests` calls."""


def register_metric(name: str, metric: LiveMetric) -> None:
    """Make `name` a live metric guards can bound (e.g. `rows_per_call`)."""
    METRICS[name] = metric


def show(name: str, value: float | None) -> str:
    if value is None:
        return f"{name} n/a"
    metric = METRICS.get(name)
    if metric is not None and metric.percent:
        return f"{name} {value * 100:.3g}%"
    return f"{name} {value:.4g}"
