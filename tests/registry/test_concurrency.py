"""Several OS processes on one registry at once, on SQLite and on PostgreSQL.

Each worker opens the registry on a brand-new database (so the schema migration
races too), waits at a barrier until all are ready, then registers versions of one
model name and moves one alias to each of them. Afterwards the versions must be
exactly 1..N with no error anywhere, and the alias's audit trail must be one unbroken
chain: every move's `from_version` is the previous move's `to_version`.
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
from pathlib import Path

import pytest
from registry_helpers import concurrent_worker

from modelport import Registry, Settings

WORKERS = 4
EACH = 3


def _run_workers(url: str, home: Path) -> list[int]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=concurrent_worker,
                         args=(url, str(home), barrier, results, EACH))
             for _ in range(WORKERS)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [detail for kind, detail in outcomes if kind == "error"]
    assert not errors, errors[0]
    return [v for _, mine in outcomes for v in mine]


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    url: str = request.getfixturevalue("pg_url")  # an empty database: no tables yet
    return url


def test_concurrent_registrations_get_distinct_versions(fresh_url: str, tmp_path: Path) -> None:
    started = time.perf_counter()
    versions = _run_workers(fresh_url, tmp_path / "home")
    elapsed = time.perf_counter() - started
    assert sorted(versions) == list(range(1, WORKERS * EACH + 1))
    with Registry(url=fresh_url, settings=Settings(home=tmp_path / "home")) as reg:
        assert [v.version for v in reg.list_versions("shared")] == sorted(versions)
        trail = reg.alias_history("shared", "production")
        assert len(trail) == WORKERS * EACH  # every set was a real move: versions differ
        assert trail[0].from_version is None
        for before, after in itertools.pairwise(trail):
            assert after.from_version == before.to_version
        assert reg.get_alias("shared", "production") == trail[-1].to_version
    print(f"{WORKERS} processes x {EACH} registrations: {elapsed:.2f}s")
