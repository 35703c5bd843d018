"""Live quality: the prediction log joined with feedback, per model version.

`live_quality(model, version, metric, since, log=…)` is the one entry point (the
report, the gauges and a promotion guard all call it): it reads the logged predictions
of that version since `since` that have a label (by request id and row, or by pipeline
key; see `monitoring.feedback`), at most MAX_JOINED of the newest, and computes:

- classifiers: `accuracy` (predicted class equals the label) and `auc` (ROC AUC from
  the `probabilities` output; one-vs-rest macro average for several classes, with the
  classes in sorted order as scikit-learn's `classes_`);
- regressors: `mae`, `rmse`;
- rankers: `recall@k` and `ndcg@k` (binary relevance; the label is the list of
  relevant items, the prediction the ranked list; `recall`/`ndcg` use k = the
  list's length).

Only logged rows can be joined: with `monitoring.sample_rate` below 1 the metric is
over the sampled rows (unbiased, but from fewer of them).

`QualityWatch` keeps `modelport_live_quality{model,version,metric}` up to date for the
versions a server serves, computing from the database every `quality_interval_s`, so
every replica exports the same values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from modelport.errors import InvalidInput
from modelport.model import ModelVersion
from modelport.monitoring.feedback import REQUEST, FeedbackStore, feedback
from modelport.monitoring.logstore import predictions
from modelport.monitoring.metrics import Metrics

log = logging.getLogger("modelport.quality")

MAX_JOINED = 100_000
"""Labelled predictions read per computation (the newest): bounded time and memory."""
TASKS = {"classifier": ("accuracy", "auc"), "regressor": ("mae", "rmse"),
         "ranker": ("recall", "ndcg")}
_AT_K = re.compile(r"(recall|ndcg)(?:@(\d+))?")


@dataclass(frozen=True)
class LiveQuality:
    """A metric over the labelled predictions of one version; `value` is None when no
    row could be judged (no labels yet, or the metric does not apply)."""

    model: str
    version: int
    metric: str
    value: float | None
    rows: int


def task_of(record: ModelVersion) -> str | None:
    """classifier, regressor or ranker: the `task` tag when registered with one, else
    read off the signature's first output (a `probabilities` output or a class-like
    type: classifier; a list per row: ranker; floats: regressor)."""
    tagged = record.tags.get("task")
    if tagged in TASKS:
        return str(tagged)
    outputs = record.signature.outputs
    if not outputs:
        return None
    first = outputs[0]
    if any(o.name == "probabilities" for o in outputs):
        return "classifier"
    if first.shape:
        return "ranker"
    if first.datatype.startswith("FP"):
        return "regressor"
    return "classifier"  # BYTES, BOOL, INT*: classes


def metrics_for(record: ModelVersion) -> list[str]:
    """The live metrics a version's task has (ranker metrics at the output's k)."""
    task = task_of(record)
    if task is None:
        return []
    names = list(TASKS[task])
    shape = record.signature.outputs[0].shape
    if task == "ranker" and shape and shape[0] > 0:
        names = [f"{n}@{shape[0]}" for n in names]
    return names


def live_quality(model: str, version: int, metric: str, since: datetime | timedelta, *,
                 log: FeedbackStore, until: datetime | None = None,
                 output: str | None = None) -> LiveQuality:
    """`metric` (accuracy, auc, mae, rmse, recall@k, ndcg@k) of `model` version
    `version` on its predictions logged since `since` (a time, or that long ago) that
    have feedback. `output` is the output compared with the label (default
    `predictions`, else the first)."""
    compute = _metric(metric)
    rows = joined(log, model, version, since, until)
    return LiveQuality(model, version, metric, compute(rows, output), len(rows))


def joined(log: FeedbackStore, model: str, version: int, since: datetime | timedelta,
           until: datetime | None = None, limit: int = MAX_JOINED
           ) -> list[tuple[dict[str, Any], Any]]:
    """(outputs, label) of the newest `limit` labelled predictions in the window."""
    log.ensure()
    start = datetime.now(UTC) - since if isinstance(since, timedelta) else since
    p, f = predictions.c, feedback.c
    where = [p.model == model, p.version == version, p.ts >= start]
    if until is not None:
        where.append(p.ts < until)
    by_request = sa.select(p.id, p.outputs, f.label).join(feedback, sa.and_(
        f.scope == REQUEST, f.ident == p.request_id, f.row_index == p.row_index)).where(
        *where, p.request_id.is_not(None))
    by_key = sa.select(p.id, p.outputs, f.label).join(feedback, sa.and_(
        f.scope == p.source, f.ident == p.row_key)).where(*where, p.row_key.is_not(None))
    both = sa.union_all(by_request, by_key).subquery()
    query = sa.select(both.c.outputs, both.c.label).order_by(both.c.id.desc()).limit(limit)
    with log.log.errors(), log.log.engine.connect() as conn:
        return [(outputs, label) for outputs, label in conn.execute(query)]


def quality_for(log: FeedbackStore, record: ModelVersion, since: datetime | timedelta,
                until: datetime | None = None) -> list[LiveQuality]:
    """Every live metric of the version's task, from one read of the joined rows."""
    names = metrics_for(record)
    if not names:
        return []
    rows = joined(log, record.name, record.version, since, until)
    return [LiveQuality(record.name, record.version, n, _metric(n)(rows, None), len(rows))
            for n in names]


# --- the metrics ---------------------------------------------------------------------------

Rows = list[tuple[dict[str, Any], Any]]


def _metric(name: str) -> Callable[[Rows, str | None], float | None]:
    simple: dict[str, Callable[[Rows, str | None], float | None]] = {
        "accuracy": _accuracy, "auc": _auc, "mae": _mae, "rmse": _rmse}
    if name in simple:
        return simple[name]
    at_k = _AT_K.fullmatch(name)
    if at_k is None:
        raise InvalidInput(f"unknown live metric {name!r}; expected one of accuracy, auc, "
                           "mae, rmse, recall@K, ndcg@K")
    k = int(at_k[2]) if at_k[2] else None
    which = at_k[1]
    return lambda rows, output: _ranking(rows, output, which, k)


def _predicted(outputs: dict[str, Any], output: str | None) -> Any:
    if output is not None:
        return outputs.get(output)
    if "predictions" in outputs:
        return outputs["predictions"]
    return next(iter(outputs.values()), None)


def _norm(value: Any) -> str:
    """Labels compare as text, numbers by value: 1, 1.0 and "1" are the same class."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(float(value))
    return str(value)


def _accuracy(rows: Rows, output: str | None) -> float | None:
    pairs = [(_predicted(o, output), label) for o, label in rows]
    pairs = [(p, t) for p, t in pairs if p is not None]
    if not pairs:
        return None
    return sum(_norm(p) == _norm(t) for p, t in pairs) / len(pairs)


def _auc(rows: Rows, output: str | None) -> float | None:
    usable = [(o["probabilities"], label, _predicted(o, output)) for o, label in rows
              if isinstance(o.get("probabilities"), list)]
    if not usable:
        return None
    proba = np.asarray([u[0] for u in usable], dtype=np.float64)
    # scikit-learn's classes_ are the sorted labels seen in training: every class seen
    # here, sorted the same way, gives the columns when all of them were seen
    seen = {_norm(v): v for _, label, pred in usable for v in (label, pred) if v is not None}
    classes = sorted(seen.values(), key=_order)
    if proba.ndim != 2 or len(classes) != proba.shape[1] or len(classes) < 2:
        return None
    truth = np.asarray([_norm(label) for _, label, _ in usable])
    names = [_norm(c) for c in classes]
    if len(names) == 2:
        return _binary_auc(truth == names[1], proba[:, 1])
    scores = [_binary_auc(truth == name, proba[:, i]) for i, name in enumerate(names)]
    present = [s for s in scores if s is not None]
    return float(np.mean(present)) if present else None


def _order(value: Any) -> tuple[int, Any]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic, ties counted half (as scikit-learn)."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    _, first, counts = np.unique(ordered, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat(average, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _errors(rows: Rows, output: str | None) -> np.ndarray | None:
    pairs = []
    for o, label in rows:
        pred = _predicted(o, output)
        if isinstance(pred, int | float) and isinstance(label, int | float):
            pairs.append((float(pred), float(label)))
    if not pairs:
        return None
    values = np.asarray(pairs, dtype=np.float64)
    diff: np.ndarray = values[:, 0] - values[:, 1]
    return diff


def _mae(rows: Rows, output: str | None) -> float | None:
    err = _errors(rows, output)
    return None if err is None else float(np.mean(np.abs(err)))


def _rmse(rows: Rows, output: str | None) -> float | None:
    err = _errors(rows, output)
    return None if err is None else float(math.sqrt(np.mean(err ** 2)))


def _ranking(rows: Rows, output: str | None, which: str, k: int | None) -> float | None:
    scores = []
    for o, label in rows:
        ranked = _predicted(o, output)
        if not isinstance(ranked, list):
            continue
        relevant = {_norm(v) for v in (label if isinstance(label, list) else [label])}
        if not relevant:
            continue
        top = [_norm(v) for v in ranked[:k or len(ranked)]]
        hits = [i for i, item in enumerate(top) if item in relevant]
        if which == "recall":
            scores.append(len(hits) / len(relevant))
        else:
            dcg = sum(1 / math.log2(i + 2) for i in hits)
            ideal = sum(1 / math.log2(i + 2) for i in range(min(len(top), len(relevant))))
            scores.append(dcg / ideal if ideal else 0.0)
    return float(np.mean(scores)) if scores else None


# --- the gauges ---------------------------------------------------------------------------


class QualityWatch:
    """Recompute the live-quality gauges of the served versions every `interval_s`,
    over the `window_s` before, from the database (a background task)."""

    def __init__(self, log: FeedbackStore, metrics: Metrics,
                 served: Callable[[], Sequence[ModelVersion]], *,
                 interval_s: float, window_s: float) -> None:
        self.log = log
        self.metrics = metrics
        self.served = served
        self.interval_s = interval_s
        self.window_s = window_s
        self._task: asyncio.Task[None] | None = None
        self._exported: set[tuple[str, ...]] = set()  # label sets set last time

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="live-quality")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None  # the store is its owner's to close

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # a database outage must not end the task
                log.warning("live quality not updated: %s", exc)
            await asyncio.sleep(self.interval_s)

    async def refresh(self) -> None:
        records = list(self.served())
        results = await asyncio.to_thread(self._compute, records)
        exported: set[tuple[str, ...]] = set()
        for q in results:
            labels = (q.model, str(q.version))
            self.metrics.feedback_rows.labels(*labels).set(q.rows)
            exported.add(labels)
            if q.value is not None:
                self.metrics.live_quality.labels(*labels, q.metric).set(q.value)
                exported.add((*labels, q.metric))
        # a version no longer served (the alias moved) is no longer reported as live
        for gone in self._exported - exported:
            gauge = self.metrics.feedback_rows if len(gone) == 2 else self.metrics.live_quality
            gauge.remove(*gone)
        self._exported = exported

    def _compute(self, records: list[ModelVersion]) -> list[LiveQuality]:
        since = timedelta(seconds=self.window_s)
        return [q for record in records for q in quality_for(self.log, record, since)]
