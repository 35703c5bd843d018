"""One version's shadow agreement from the prediction log (SQLite): its rows as the
primary and as the shadow count, a version shadowing itself does not, nor does a row
logged before the window or without a partner."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from modelport.monitoring.agreement import shadow_agreement, version_agreement
from modelport.monitoring.logstore import LogStore

SINCE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def logged(request: str, model: str, version: int, source: str, y: float,
           ts: datetime = SINCE + timedelta(seconds=1)) -> dict[str, Any]:
    return {"ts": ts, "model": model, "version": version, "source": source,
            "latency_ms": 1.0, "inputs": {"x": 1.0}, "outputs": {"y": y},
            "request_id": request, "row_index": 0, "row_key": None}


def test_a_versions_agreement_counts_it_as_primary_and_as_shadow(tmp_path: Path) -> None:
    store = LogStore(f"sqlite:///{tmp_path / 'log.db'}")
    store.write([
        # v3 as the shadow of v1: disagrees
        logged("a", "m", 1, "predict", 1.0), logged("a", "m", 3, "shadow:predict", 2.0),
        # v3 as the primary, v1 its shadow: agrees
        logged("b", "m", 3, "predict", 5.0), logged("b", "m", 1, "shadow:predict", 5.0),
        # v3 shadowing itself (a shadow alias on the same version): not a comparison
        logged("c", "m", 3, "predict", 7.0), logged("c", "m", 3, "shadow:predict", 8.0),
        # v3 with no shadow answer: nothing to compare
        logged("d", "m", 3, "predict", 9.0),
        # before the window
        logged("e", "m", 3, "predict", 1.0, SINCE - timedelta(seconds=1)),
        logged("e", "m", 1, "shadow:predict", 2.0, SINCE - timedelta(seconds=1)),
    ], {})
    try:
        assert version_agreement(store, "m", 3, SINCE) == (1.0, 2)
        assert version_agreement(store, "m", 1, SINCE) == (1.0, 2)
        assert version_agreement(store, "m", 2, SINCE) == (0.0, 0)
        assert version_agreement(store, "m", 3, SINCE, SINCE) == (0.0, 0)
        # the report sees every pair, the self-shadow included
        pairs = {(s.version, s.shadow_version): (s.agreed, s.rows)
                 for s in shadow_agreement(store, SINCE, SINCE + timedelta(minutes=1))}
        assert pairs == {(1, 3): (0.0, 1), (3, 1): (1.0, 1), (3, 3): (0.0, 1)}
    finally:
        store.close()
