"""SQL engines (`modelport.connections.sql`): how SQLite connections are kept for the
threads that query them, and how a server's pooled connections are checked."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, text

from modelport.connections import sql
from modelport.connections.sql import POOL_SIZE, make_engine


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_threads_querying_at_once_reuse_their_connections(
        database: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'users.db'}" if database == "sqlite" \
        else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    opened = 0

    def count(*_: object) -> None:
        nonlocal opened
        opened += 1

    event.listen(engine, "connect", count)
    # every query of a round holds its connection until all of them hold one
    together = threading.Barrier(POOL_SIZE)

    def query() -> int:
        with engine.connect() as conn:
            together.wait(timeout=10)
            return int(conn.execute(text("SELECT 1")).scalar_one())

    try:
        for _ in range(5):  # as many queries at once as the default executor has threads
            assert await asyncio.gather(*(asyncio.to_thread(query)
                                          for _ in range(POOL_SIZE))) == [1] * POOL_SIZE
    finally:
        engine.dispose()
    # each thread's connection is opened once and kept, not opened and closed per query
    assert opened == POOL_SIZE


@pytest.mark.postgres
def test_a_connection_idle_for_a_while_is_checked_and_replaced_when_stale(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql, "PING_IDLE_S", 0.2)
    engine = make_engine(pg_url)

    def backend() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    try:
        first = backend()
        assert backend() == first  # in steady use: reused as it is
        admin = make_engine(pg_url)
        with admin.connect() as conn:  # the server drops it, as a restart would
            conn.execute(text(f"SELECT pg_terminate_backend({first})"))
        admin.dispose()
        time.sleep(0.3)
        assert backend() != first  # idle past PING_IDLE_S: checked, found gone, replaced
    finally:
        engine.dispose()
