"""Small SQLite lookups by an indexed key run on the event loop; the rest in a thread."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from modelport.errors import ModelportError
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
    monkeypatch.setattr("modelport.connections.sql.event.listens_for",
                        lambda *_: (lambda fn: fn))
    assert await lookup(SqlRetriever(url, table="users"), ["u1"]) == ["u1"]
    assert threads == [1]


async def test_on_the_event_loop_values_come_back_as_sqlalchemy_reads_them(
        tmp_path: Path, threads: list[int]) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with create_engine(url).begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        # SQLite stores booleans as integers and dates as text: SQLAlchemy converts them
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, "
                          "active BOOLEAN, seen DATETIME, note VARCHAR(10))"))
        conn.execute(text("INSERT INTO t VALUES (1, 'a', 0.5, 1, '2024-05-01 10:00:00', "
                          "NULL), (2, 'b', NULL, 0, NULL, 'x')"))
    for columns in (["name", "score", "note"], ["name", "active", "seen"]):
        retriever = SqlRetriever(url, table="t", columns=columns)
        await retriever.start()
        try:
            inline = await retriever.get(["2", 1, 3])  # an HTTP caller's "2" for 2
            reference = retriever._get(["2", 1, 3])  # SQLAlchemy's execution
        finally:
            await retriever.close()
        assert inline.keys == reference.keys == [1, "2"]
        for name in columns:
            assert [None if v != v else v for v in inline.columns[name].tolist()] == \
                [None if v != v else v for v in reference.columns[name].tolist()]
    assert threads == []


async def test_errors_on_the_event_loop_are_translated(tmp_path: Path) -> None:
    url = database(tmp_path / "db.sqlite")
    retriever = SqlRetriever(url, table="users")
    await retriever.start()
    try:
        with create_engine(url).begin() as conn:
            conn.execute(text("DROP TABLE users"))
        with pytest.raises(ModelportError, match="no such table"):
            await retriever.get(["u1"])
    finally:
        await retriever.close()
