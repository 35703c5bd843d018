"""Small SQLite lookups by an indexed key run on the event loop; the rest in a thread."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from modelport.pipeline import sql as sql_module
from modelport.pipeline.sql import INLINE_KEYS, SqlRetriever


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the lookups handed to a thread."""
    handed: list[int] = []
    to_thread = asyncio.to_thread

    async def counting(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        if getattr(func, "__name__", "") == "_get":
            handed.append(len(args[0]))
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(sql_module.asyncio, "to_thread", counting)
    return handed


def database(path: Path, *, wal: bool = True) -> str:
    url = f"sqlite:///{path}"
    with create_engine(url).begin() as conn:
        if wal:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.execute(text("CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT, age INTEGER)"))
        conn.execute(text("CREATE TABLE visits (ts REAL, email TEXT, page TEXT)"))
        conn.execute(text("CREATE INDEX visits_email ON visits (email)"))
        for i in range(100):
            conn.execute(text("INSERT INTO users VALUES (:id, :email, :age)"),
                         {"id": f"u{i}", "email": f"{i}@x", "age": i})
            conn.execute(text("INSERT INTO visits VALUES (:ts, :email, '/')"),
                         {"ts": i, "email": f"{i}@x"})
    return url


async def lookup(retriever: SqlRetriever, keys: list[Any]) -> list[Any]:
    await retriever.start()
    try:
        frame = await retriever.get(keys)
    finally:
        await retriever.close()
    return sorted(frame.keys)


async def test_a_few_keys_by_an_index_are_read_on_the_event_loop(
        tmp_path: Path, threads: list[int]) -> None:
    url = database(tmp_path / "db.sqlite")
    assert await lookup(SqlRetriever(url, table="users"), ["u1", "u2", "nobody"]) == [
        "u1", "u2"]
    assert await lookup(SqlRetriever(url, table="visits", key="email"), ["3@x"]) == ["3@x"]
    assert threads == []


async def test_many_keys_and_unindexed_keys_go_to_a_thread(
        tmp_path: Path, threads: list[int]) -> None:
    url = database(tmp_path / "db.sqlite")
    many = [f"u{i}" for i in range(INLINE_KEYS + 1)]
    assert len(await lookup(SqlRetriever(url, table="users"), many)) == INLINE_KEYS + 1
    # a lookup by a column without an index scans the table: never on the event loop
    assert await lookup(SqlRetriever(url, table="users", key="email"), ["5@x"]) == ["5@x"]
    assert threads == [INLINE_KEYS + 1, 1]


async def test_without_wal_readers_wait_for_writers_so_lookups_go_to_a_thread(
        tmp_path: Path, threads: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    url = database(tmp_path / "db.sqlite", wal=False)
    # the engine would switch the file to WAL on connect: keep its rollback journal
    monkeypatch.setattr("modelport.pipeline.sqlconn.event.listens_for",
                        lambda *_: (lambda fn: fn))
    assert await lookup(SqlRetriever(url, table="users"), ["u1"]) == ["u1"]
    assert threads == [1]
