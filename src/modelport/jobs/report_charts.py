"""The report's charts: matplotlib figures rendered to SVG, as base64 data URIs.

Figures are made with `matplotlib.figure.Figure`, not pyplot: no global backend is
selected and no figure registry grows, so reports render in any thread of a server
or scheduler (savefig draws with the Agg/SVG canvases). Text stays text in the SVG
(`svg.fonttype: none`): small files, crisp at any zoom, searchable.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.errors import ConfigError
from modelport.monitoring.drift import FeatureDrift
from modelport.monitoring.logstore import percentile
from modelport.registry import ModelVersion

try:
    import matplotlib
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ImportError:  # pragma: no cover - the extra is missing
    raise ConfigError("reports need matplotlib: pip install 'modelport[reports]'") from None

if TYPE_CHECKING:
    from modelport.jobs.report import ModelReport

STYLE: dict[Any, Any] = {  # Any: matplotlib types the keys as one long Literal
    "svg.fonttype": "none",
    "font.family": "sans-serif",  # DejaVu Sans (shipped with matplotlib) lays text out
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e5e5",
    "axes.axisbelow": True,
    "legend.frameon": False,
}
COLORS = ["#1f6fb2", "#e07b39", "#3a9d5d", "#8e5ab5", "#c23b3b", "#7f7f7f", "#b5a13a"]
WIDE = (10, 3.4)
MAX_CLASSES = 6
STEP_NAMES = {60: "minute", 300: "5 minutes", 900: "15 minutes", 3600: "hour",
              10800: "3 hours", 21600: "6 hours", 86400: "day"}


def step_name(step: int) -> str:
    return STEP_NAMES.get(step, f"{step} s")


def _figure(size: tuple[float, float] = WIDE) -> Figure:
    return Figure(figsize=size, layout="constrained")


def _uri(fig: Figure) -> str:
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="svg", metadata={"Date": None})  # no date: stable output
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def _legend_above(ax: Any, ncol: int, title: str) -> None:
    """Legend in a row between the title and the plot: never over the data, and every
    time chart keeps the same plot width (a legend at the side would narrow it)."""
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=ncol, fontsize=9,
              borderaxespad=0, handlelength=1.5, columnspacing=1.2)
    ax.set_title(title, pad=24)


def _time_axis(ax: Any, m: ModelReport) -> None:
    ax.set_xlabel("time (UTC)")
    locator = mdates.AutoDateLocator(maxticks=10)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(
        mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    ax.set_xlim(m.buckets[0], _end(m))


def _end(m: ModelReport) -> datetime:
    return m.buckets[-1] + timedelta(seconds=m.step)


def _centres(m: ModelReport) -> np.ndarray:
    days = mdates.date2num(m.buckets)  # type: ignore[no-untyped-call]
    return np.asarray(days) + m.step / 86400 / 2


def calls_chart(m: ModelReport) -> str:
    """Calls per bucket, stacked by version."""
    with matplotlib.rc_context(STYLE):
        fig = _figure()
        ax = fig.add_subplot()
        x, bottom = _centres(m), np.zeros(len(m.buckets))
        for i, (version, calls) in enumerate(sorted(m.calls.items())):
            ax.bar(x, calls, width=m.step / 86400 * 0.85, bottom=bottom,
                   color=COLORS[i % len(COLORS)], label=f"version {version}")
            bottom += np.asarray(calls)
        ax.set_ylabel("model calls")
        ax.set_ylim(0, max(float(bottom.max()), 1.0) * 1.08)  # the tallest bar not at the rim
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        _time_axis(ax, m)
        _legend_above(ax, len(m.calls), f"Calls per {step_name(m.step)}, by model version")
        return _uri(fig)


def latency_chart(m: ModelReport) -> str:
    """p50 and p95 latency of model calls per bucket."""
    with matplotlib.rc_context(STYLE):
        fig = _figure()
        ax = fig.add_subplot()
        x = _centres(m)
        for q, label, color in ((0.5, "p50", COLORS[0]), (0.95, "p95", COLORS[1])):
            y = [percentile(c.buckets, q) for c in m.latency]
            ax.plot(x, [np.nan if v is None else v for v in y], marker="o", markersize=3,
                    color=color, label=label)
        ax.set_ylabel("milliseconds")
        ax.set_ylim(bottom=0)
        _time_axis(ax, m)
        _legend_above(ax, 2, f"Latency of model calls per {step_name(m.step)} "
                             "(all versions)")
        return _uri(fig)


@dataclass
class Series:
    """One output's values in the sampled rows, with the bucket each fell in."""

    name: str
    kind: str  # "numeric" or "classes"
    values: list[Any]
    buckets: list[int]


def output_series(m: ModelReport) -> tuple[list[Series], list[str]]:
    """Each output with one value per row (a 2-wide output: its second column, the
    positive class's score); and why other outputs are left out."""
    found: dict[str, Series] = {}
    skipped: set[str] = set()
    for sample in m.samples:
        b = m.bucket(sample["ts"])
        for name, value in sample["outputs"].items():
            if isinstance(value, list):
                if len(value) != 2 or isinstance(value[1], list):
                    skipped.add(name)
                    continue
                name, value = f"{name}[1]", value[1]
            if value is None or isinstance(value, dict):
                continue
            series = found.setdefault(name, Series(name, "numeric", [], []))
            series.values.append(value)
            series.buckets.append(b)
    for series in found.values():
        floats = any(isinstance(v, float) for v in series.values)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool)
                      for v in series.values)
        if not numbers or (not floats and len(set(series.values)) <= 20):
            series.kind = "classes"
    notes = [f"output {n!r} is not one value per row: not charted" for n in sorted(skipped)]
    return list(found.values()), notes


def output_chart(m: ModelReport, series: Series) -> str:
    with matplotlib.rc_context(STYLE):
        fig = _figure()
        ax = fig.add_subplot()
        if series.kind == "numeric":
            _numeric_over_time(ax, m, series)
        else:
            _classes_over_time(ax, m, series)
        _time_axis(ax, m)
        return _uri(fig)


def _numeric_over_time(ax: Any, m: ModelReport, series: Series) -> None:
    by_bucket: list[list[float]] = [[] for _ in m.buckets]
    for b, v in zip(series.buckets, series.values, strict=True):
        by_bucket[b].append(float(v))
    q = np.full((len(m.buckets), 3), np.nan)
    for i, values in enumerate(by_bucket):
        if values:
            q[i] = np.quantile(values, (0.1, 0.5, 0.9))
    x = _centres(m)
    ax.fill_between(x, q[:, 0], q[:, 2], color=COLORS[0], alpha=0.2, linewidth=0,
                    label="10th to 90th percentile")
    ax.plot(x, q[:, 1], color=COLORS[0], marker="o", markersize=3, label="median")
    ax.set_ylabel(series.name)
    _legend_above(ax, 2, f"Output {series.name}: distribution per {step_name(m.step)} "
                         "(sampled rows)")


def _classes_over_time(ax: Any, m: ModelReport, series: Series) -> None:
    labels = [str(v) for v in series.values]
    ranked = sorted(set(labels), key=lambda k: (-labels.count(k), k))
    shown = ranked[:MAX_CLASSES]
    rows = np.zeros((len(shown) + 1, len(m.buckets)))
    for b, label in zip(series.buckets, labels, strict=True):
        rows[shown.index(label) if label in shown else len(shown), b] += 1
    totals = rows.sum(axis=0)
    shares = np.divide(rows * 100, totals, out=np.zeros_like(rows), where=totals > 0)
    x, bottom = _centres(m), np.zeros(len(m.buckets))
    names = [*shown, "other"] if len(ranked) > len(shown) else shown
    for i, name in enumerate(names):
        ax.bar(x, shares[i], width=m.step / 86400 * 0.85, bottom=bottom,
               color=COLORS[i % len(COLORS)], label=name)
        bottom += shares[i]
    ax.set_ylabel("% of rows")
    ax.set_ylim(0, 100)
    _legend_above(ax, len(names), f"Output {series.name}: share of each value per "
                                  f"{step_name(m.step)} (sampled rows)")


def metrics_chart(versions: Sequence[ModelVersion], served: Sequence[int]) -> str | None:
    """Each numeric metric by version (small multiples: metrics have their own scales);
    None when there is nothing to compare."""
    names = sorted({k for v in versions for k, x in v.metrics.items()
                    if isinstance(x, int | float) and not isinstance(x, bool)})[:6]
    if len(versions) < 2 or not names:
        return None
    with matplotlib.rc_context(STYLE):
        cols = min(len(names), 3)
        rows = -(-len(names) // cols)
        fig = _figure((10, 2.6 * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, name in zip(axes.flat, names, strict=False):
            points = [(v.version, v.metrics[name]) for v in versions
                      if isinstance(v.metrics.get(name), int | float)]
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, color=COLORS[0], marker="o")
            for x, y in points:
                if x in served:
                    ax.plot([x], [y], marker="o", markersize=9, color=COLORS[1], zorder=3)
            ax.set_title(name, fontsize=11)
            ax.set_xlabel("version")
            ax.set_xticks(xs)
        for ax in list(axes.flat)[len(names):]:
            ax.set_visible(False)
        fig.suptitle("Registered metrics by version (orange: served in this window)",
                     fontweight="bold")
        return _uri(fig)


def drift_chart(feature: FeatureDrift) -> str:
    """Share of rows per reference bin (or category): at registration vs live."""
    labels, expected, actual = feature.shares()
    with matplotlib.rc_context(STYLE):
        fig = _figure((5, 3.2))
        ax = fig.add_subplot()
        x = np.arange(len(labels))
        ax.bar(x - 0.2, np.asarray(expected) * 100, width=0.4, color="#9aa5b1",
               label="reference (registration)")
        ax.bar(x + 0.2, np.asarray(actual) * 100, width=0.4, color=COLORS[1],
               label="live (sampled rows)")
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
        psi = f"{feature.score:.3f}" if feature.score is not None else "n/a"
        psi = ("JS " if feature.method == "js" else "PSI ") + psi
        ax.set_ylabel("% of rows")
        ax.set_xlabel("reference bins" if feature.kind == "numeric" else "category")
        _legend_above(ax, 2, f"{feature.name}: {psi} ({feature.level})")
        return _uri(fig)
