"""SQL engines: how SQLite connections are kept for the threads that query them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from sqlalchemy import create_engine, event, text

from modelport.pipeline.sql import SqlRetriever
from modelport.pipeline.sqlconn import SQLITE_POOL


async def test_concurrent_sqlite_lookups_reuse_their_connections(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'users.db'}"
    with create_engine(url).begin() as conn:
        conn.execute(text("CREATE TABLE users (id TEXT PRIMARY KEY, age INTEGER)"))
        conn.execute(text("INSERT INTO users VALUES ('a', 1), ('b', 2)"))
    retriever = SqlRetriever(url, table="users")
    await retriever.start()
    opened = 0

    def count(*_: object) -> None:
        nonlocal opened
        opened += 1

    event.listen(retriever.engine, "connect", count)
    # every lookup of a round holds its connection until all of them hold one
    together = threading.Barrier(SQLITE_POOL)
    event.listen(retriever.engine, "before_cursor_execute",
                 lambda *_: together.wait(timeout=10))
    try:
        for _ in range(5):  # as many lookups at once as the default executor has threads
            frames = await asyncio.gather(*(retriever.get(["a", "b"])
                                            for _ in range(SQLITE_POOL)))
            assert all(sorted(f.keys) == ["a", "b"] for f in frames)
    finally:
        await retriever.close()
    # each thread's connection is opened once and kept, not opened and closed per lookup
    assert opened <= SQLITE_POOL
