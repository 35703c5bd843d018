"""SQL engines: how SQLite connections are kept for the threads that query them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from sqlalchemy import event, text

from modelport.pipeline.sqlconn import SQLITE_POOL, make_engine


async def test_threads_querying_sqlite_at_once_reuse_their_connections(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'users.db'}")
    opened = 0

    def count(*_: object) -> None:
        nonlocal opened
        opened += 1

    event.listen(engine, "connect", count)
    # every query of a round holds its connection until all of them hold one
    together = threading.Barrier(SQLITE_POOL)

    def query() -> int:
        with engine.connect() as conn:
            together.wait(timeout=10)
            return int(conn.execute(text("SELECT 1")).scalar_one())

    try:
        for _ in range(5):  # as many queries at once as the default executor has threads
            assert await asyncio.gather(*(asyncio.to_thread(query)
                                          for _ in range(SQLITE_POOL))) == [1] * SQLITE_POOL
    finally:
        engine.dispose()
    # each thread's connection is opened once and kept, not opened and closed per query
    assert opened == SQLITE_POOL
