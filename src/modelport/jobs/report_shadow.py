"""The report's shadow section: how often each shadow agreed with the model it shadowed.

A shadow's answer is logged under `source = "shadow:" + the primary's source`, with the
primary's request id, for the same rows the primary's answer was kept for (see
`modelport.traffic`). Here the two are paired again: shadow rows are read for the
window, then the primary rows of the same request ids, and the n-th shadow row of a
request meets the n-th primary row of it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from modelport.monitoring.logstore import LogStore, predictions
from modelport.traffic import agreement

MAX_PAIRS = 20_000
CHUNK = 500
TOLERANCE = 1e-6
"""Numeric answers within this difference agree (the policy's own tolerance is not
logged; the live metric uses it)."""


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


def shadow_agreement(store: LogStore, since: datetime, until: datetime, *,
                     limit: int = MAX_PAIRS) -> list[ShadowAgreement]:
    """Agreement of every shadow seen in [since, until), from the logged pairs."""
    store.ensure()
    p = predictions.c
    with store.engine.connect() as conn:
        shadows = conn.execute(
            sa.select(p.id, p.model, p.version, p.source, p.request_id, p.outputs)
            .where(p.ts >= since, p.ts < until, p.source.like("shadow:%"),
                   p.request_id.is_not(None))
            .order_by(p.id).limit(limit)).all()
        ids = sorted({s.request_id for s in shadows})
        primaries: list[Any] = []
        for i in range(0, len(ids), CHUNK):
            primaries += conn.execute(
                sa.select(p.id, p.model, p.version, p.source, p.request_id, p.outputs)
                .where(p.request_id.in_(ids[i:i + CHUNK]),
                       p.source.not_like("shadow:%"))
                .order_by(p.id)).all()
    by_request: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in primaries:
        by_request[(row.request_id, row.source)].append(row)
    seen: dict[tuple[str, str, int], int] = defaultdict(int)
    pairs: dict[tuple[str, int, str, int], tuple[list[Any], list[Any]]] = {}
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
