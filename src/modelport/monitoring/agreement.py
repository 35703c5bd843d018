"""Shadow agreement: how often two versions' answers to the same rows agree.

`agreement` compares two answers in memory (the shadow runner does, call by call). The
rest pairs them again from the prediction log, so that every replica's calls count: a
shadow's answer is logged under `source = "shadow:" + the primary's source`, with the
primary's request id, for the same rows the primary's answer was kept for (see
`modelport.traffic`). Shadow rows are read, then the primary rows of the same request
ids, and the n-th shadow row of a request meets the n-th primary row of it.

- `shadow_agreement`: every primary and shadow version seen in a window (the report).
- `version_agreement`: one version against whatever it was compared with, as the
  primary or as the shadow (the guard's `agreement`).

Both read sampled rows only: the log keeps a shadow's answer for the rows it kept of
its primary's, so a sample rate of 10 % compares about 10 % of the rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from modelport.monitoring.logstore import LogStore, predictions
from modelport.signature import Batch

MAX_PAIRS = 20_000
CHUNK = 500
TOLERANCE = 1e-6
"""Logged numeric answers within this difference agree (the policy's own tolerance is
not logged; the live gauge uses it)."""

Pairs = dict[tuple[str, int, str, int], tuple[list[Any], list[Any]]]
"""(model, version, shadow, shadow version) → the primary's and the shadow's outputs."""


def agreement(primary: Batch, shadow: Batch, tolerance: float) -> tuple[float, int]:
    """How many rows of two answers agree, and how many were compared, on the first
    output: labels equal, numbers within `tolerance`, and for a row of ids (a
    ranker's top k) the share of the primary's ids the shadow also returned."""
    name = next(iter(primary), None)
    if name is None:
        return 0.0, 0
    a = primary[name]
    rows = int(a.shape[0]) if a.ndim else 1
    b = shadow.get(name)
    if b is None or b.shape[:1] != a.shape[:1]:
        return 0.0, rows
    if a.ndim <= 1 or (a.ndim == 2 and a.shape[1] == 1 and b.ndim <= 2):
        return float(np.count_nonzero(_same(a.reshape(rows), b.reshape(rows), tolerance))), rows
    if a.ndim == 2 and not np.issubdtype(a.dtype, np.floating):
        overlap = sum(len(set(x.tolist()) & set(y.tolist())) / max(len(x), 1)
                      for x, y in zip(a, b, strict=True))
        return float(overlap), rows
    if a.shape != b.shape:
        return 0.0, rows
    same = _same(a.reshape(rows, -1), b.reshape(rows, -1), tolerance)
    return float(np.count_nonzero(same.all(axis=1))), rows


def _same(a: np.ndarray, b: np.ndarray, tolerance: float) -> np.ndarray:
    if np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number):
        return np.isclose(a.astype(np.float64), b.astype(np.float64),
                          rtol=tolerance, atol=tolerance)
    return np.asarray(a == b, dtype=bool)


@dataclass
class ShadowAgreement:
    """One primary model version and one shadow version over the window."""

    model: str
    version: int
    shadow: str
    shadow_version: int
    rows: int
    agreed: float

    @property
    def rate(self) -> float | None:
        return self.agreed / self.rows if self.rows else None

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "shadow": self.shadow,
                "shadow_version": self.shadow_version, "rows": self.rows,
                "agreement": None if self.rate is None else round(self.rate, 4)}


_COLUMNS = (predictions.c.id, predictions.c.model, predictions.c.version,
            predictions.c.source, predictions.c.request_id, predictions.c.outputs)
_SHADOW = "shadow:%"


def shadow_agreement(store: LogStore, since: datetime, until: datetime, *,
                     limit: int = MAX_PAIRS) -> list[ShadowAgreement]:
    """Agreement of every shadow seen in [since, until), from the logged pairs."""
    store.ensure()
    p = predictions.c
    with store.engine.connect() as conn:
        shadows = conn.execute(
            sa.select(*_COLUMNS)
            .where(p.ts >= since, p.ts < until, p.source.like(_SHADOW),
                   p.request_id.is_not(None))
            .order_by(p.id).limit(limit)).all()
        primaries = _of_requests(conn, sorted({s.request_id for s in shadows}),
                                 p.source.not_like(_SHADOW))
    return compare(pair(shadows, primaries))


def version_agreement(store: LogStore, model: str, version: int, since: datetime,
                      until: datetime | None = None, *,
                      limit: int = MAX_PAIRS) -> tuple[float, int]:
    """How many logged rows of `model:version` agreed with the version they were
    compared with, and how many were compared, in [since, until): its answers as a
    primary against its shadow's, and as a shadow against its primary's. A version
    compared with itself (a shadow that follows the same alias) does not count. At
    most the `limit` newest requests are read."""
    store.ensure()
    p = predictions.c
    where = [p.model == model, p.version == version, p.ts >= since,
             p.request_id.is_not(None)]
    if until is not None:
        where.append(p.ts < until)
    with store.engine.connect() as conn:
        ids = conn.execute(
            sa.select(p.request_id).where(*where).group_by(p.request_id)
            .order_by(sa.func.max(p.id).desc()).limit(limit)).scalars().all()
        rows = _of_requests(conn, sorted(ids))
    shadows = [r for r in rows if r.source.startswith("shadow:")]
    primaries = [r for r in rows if not r.source.startswith("shadow:")]
    agreed, compared = 0.0, 0
    for group in compare(pair(shadows, primaries)):
        if (group.model, group.version) == (group.shadow, group.shadow_version):
            continue
        if (model, version) in ((group.model, group.version),
                                (group.shadow, group.shadow_version)):
            agreed += group.agreed
            compared += group.rows
    return agreed, compared


def _of_requests(conn: Connection, ids: Sequence[str],
                 *where: sa.ColumnElement[bool]) -> list[Any]:
    """The logged rows of these request ids, oldest first within each request."""
    rows: list[Any] = []
    for i in range(0, len(ids), CHUNK):
        rows += conn.execute(
            sa.select(*_COLUMNS)
            .where(predictions.c.request_id.in_(ids[i:i + CHUNK]), *where)
            .order_by(predictions.c.id)).all()
    return rows


def pair(shadows: Sequence[Any], primaries: Sequence[Any]) -> Pairs:
    """Each shadow row (oldest first) with the primary row of its request it shadowed."""
    by_request: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in primaries:
        by_request[(row.request_id, row.source)].append(row)
    seen: dict[tuple[str, str, str], int] = defaultdict(int)
    pairs: Pairs = {}
    for s in shadows:
        source = s.source.removeprefix("shadow:")
        rank = seen[(s.request_id, source, s.model)]
        seen[(s.request_id, source, s.model)] += 1
        matches = by_request.get((s.request_id, source), [])
        if rank >= len(matches):
            continue  # its primary row was not kept (the log's buffer was full)
        primary = matches[rank]
        group = pairs.setdefault((primary.model, primary.version, s.model, s.version),
                                 ([], []))
        group[0].append(primary.outputs)
        group[1].append(s.outputs)
    return pairs


def compare(pairs: Pairs) -> list[ShadowAgreement]:
    out = []
    for (model, version, shadow, shadow_version), (first, second) in sorted(pairs.items()):
        agreed, rows = agreement(_batch(first), _batch(second), TOLERANCE)
        out.append(ShadowAgreement(model, version, shadow, shadow_version, rows, agreed))
    return out


def _batch(outputs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    names = [n for n in outputs[0] if all(n in o for o in outputs)]
    batch = {}
    for name in names:
        try:
            batch[name] = np.asarray([o[name] for o in outputs])
        except ValueError:  # ragged rows: compared as objects
            batch[name] = np.asarray([o[name] for o in outputs], dtype=object)
    return batch
