"""SQL components against real databases: SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from sqlalchemy import create_engine, text

from conftest import require_service
from modelport.errors import ConfigError, ModelportError, NotReady
from modelport.pipeline import Frame, pgcopy
from modelport.pipeline import sql as sql_module
from modelport.pipeline.sql import SqlRetriever, SqlWriter

MYSQL_HOST = os.environ.get("MODELPORT_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("MODELPORT_TEST_MYSQL_PORT", "3306"))
MYSQL_URL = os.environ.get("MODELPORT_TEST_MYSQL",
                           f"mysql+pymysql://root@{MYSQL_HOST}:{MYSQL_PORT}/test")


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'features.db'}"
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_server_url"))
    require_service("MariaDB", MYSQL_HOST, MYSQL_PORT)
    return MYSQL_URL


@pytest.fixture
def pg(pg_server_url: str) -> str:
    """PostgreSQL alone, for what only it does (COPY)."""
    return pg_server_url


@pytest.fixture
def table(request: pytest.FixtureRequest) -> Iterator[str]:
    """A table name no other test uses, dropped afterwards."""
    url = request.getfixturevalue("pg" if "pg" in request.fixturenames else "url")
    name = f"mp_{uuid.uuid4().hex[:12]}"
    yield name
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
    engine.dispose()


def execute(url: str, *statements: str) -> list[tuple[object, ...]]:
    """Run statements in one transaction; the rows of the last one that returns any."""
    engine = create_engine(url)
    rows: list[tuple[object, ...]] = []
    with engine.begin() as conn:
        for statement in statements:
            result = conn.execute(text(statement))
            if result.returns_rows:
                rows = [tuple(r) for r in result.fetchall()]
    engine.dispose()
    return rows


def scores(n: int, start: int = 0) -> Frame:
    p = np.linspace(0.0, 1.0, n)
    return Frame(list(range(start, start + n)), {
        "probabilities": np.stack([1 - p, p], axis=1),  # [N, 2]: an array or JSON per row
        "predictions": (p > 0.5).astype(np.int64),
        "score": p,
        "flagged": p > 0.9,
        "label": np.asarray([f"user-{i}" for i in range(n)], dtype=object),
    })


async def test_frames_written_side_by_side_create_the_table_once(url, table) -> None:
    """A batch job writes its first chunks at once: the one table is created once."""
    import asyncio

    writer = SqlWriter(url, table, create=True)
    await writer.start()
    await asyncio.gather(*(writer.write(scores(100, start=100 * i)) for i in range(3)))
    await writer.close()
    assert execute(url, f"SELECT COUNT(*), COUNT(DISTINCT id) FROM {table}") == [(300, 300)]


async def test_upsert_creates_the_table_then_reads_many_keys_in_one_query(url, table) -> None:
    writer = SqlWriter(url, table, create=True)
    await writer.start()
    frame = scores(10)
    frame.columns["score"][3] = np.nan  # stored as NULL
    frame.columns["probabilities"][4, 1] = np.nan  # in an array (or JSON) too
    await writer.write(frame)
    await writer.write(scores(4, start=8))  # 8, 9 updated; 10, 11 new
    await writer.close()
    assert execute(url, f"SELECT COUNT(*) FROM {table}") == [(12,)]

    retriever = SqlRetriever(url, table=table)
    await retriever.start()
    got = await retriever.get([2, "3", 9, 11, 404, "x"])  # "3": an HTTP caller's string
    assert len(await retriever.get(["x", "y"])) == 0  # not integers: no data, no query
    await retriever.close()
    rows = dict(zip(got.keys, got.records(), strict=True))
    assert set(rows) == {2, "3", 9, 11}  # the caller's keys come back; missing ones absent
    probabilities = rows[2]["probabilities"]
    if url.startswith("postgresql"):  # an array per row there; JSON text elsewhere
        assert got.columns["probabilities"].shape == (4, 2)
    else:
        probabilities = orjson.loads(probabilities)
    assert probabilities == pytest.approx([1 - 2 / 9, 2 / 9])
    (stored,), = execute(url, f"SELECT probabilities FROM {table} WHERE id = 4")
    assert (stored if url.startswith("postgresql") else orjson.loads(stored))[1] is None
    assert rows[9]["label"] == "user-1" and rows[9]["score"] == pytest.approx(1 / 3)
    assert np.isnan(got.columns["score"][got.keys.index("3")])
    assert got.columns["predictions"].dtype.kind == "i"
    assert bool(rows[11]["flagged"]) is True
    assert "id" not in got.columns  # the key is the frame's keys, not a column


async def test_lookups_split_into_chunks_and_dedupe_frames(url, table, monkeypatch) -> None:
    monkeypatch.setattr(sql_module, "IN_CHUNK", 7)
    monkeypatch.setattr(sql_module, "ANY_CHUNK", 7)
    writer = SqlWriter(url, table, create=True, columns=["score"])
    await writer.start()
    frame = scores(50)
    doubled = Frame([*frame.keys, 5], {"score": np.append(frame.columns["score"], 42.0)})
    await writer.write(doubled)  # key 5 twice in one frame: the last row wins
    retriever = SqlRetriever(url, table=table, columns=["score"])
    got = await retriever.get(list(range(60)))
    await writer.close()
    await retriever.close()
    assert sorted(got.keys) == list(range(50))  # type: ignore[type-var]
    assert dict(zip(got.keys, got.columns["score"].tolist(), strict=True))[5] == 42.0


async def test_large_frames_upsert_and_read_back(url, table) -> None:
    n = 5_000  # past COPY_MIN_ROWS: PostgreSQL takes the COPY path
    writer = SqlWriter(url, table, create=True)
    await writer.start()
    await writer.write(scores(n))
    updated = scores(n)
    updated.columns["score"] = updated.columns["score"] + 1
    await writer.write(updated)
    await writer.close()
    retriever = SqlRetriever(url, table=table, columns=["score", "label"])
    await retriever.start()
    got = await retriever.get(list(range(n)))  # as many keys: COPY on PostgreSQL too
    await retriever.close()
    order = np.argsort(np.asarray(got.keys))
    assert sorted(got.keys) == list(range(n))  # type: ignore[type-var]
    np.testing.assert_allclose(got.columns["score"][order], np.linspace(0, 1, n) + 1)
    assert set(got.columns) == {"score", "label"}


async def test_queries_with_and_without_keys_parameter(url, table) -> None:
    execute(url, f"CREATE TABLE {table} (user_id VARCHAR(20) PRIMARY KEY, plays INTEGER)",
            f"INSERT INTO {table} VALUES ('ann', 3), ('bob', 5), ('cy', 7)")
    keyed = SqlRetriever(url, key="user_id",
                         query=f"SELECT user_id, plays * 2 AS twice FROM {table} "
                               "WHERE user_id IN :keys")
    filtered = SqlRetriever(url, key="user_id",
                            query=f"SELECT user_id, plays FROM {table} WHERE plays > 3;")
    a = await keyed.get(["ann", "cy", "zed"])
    b = await filtered.get(["ann", "bob", "cy"])
    await keyed.close()
    await filtered.close()
    assert dict(zip(a.keys, a.columns["twice"].tolist(), strict=True)) == {"ann": 6, "cy": 14}
    assert sorted(b.keys) == ["bob", "cy"]  # type: ignore[type-var]


async def test_string_keys_and_a_created_varchar_key(url, table) -> None:
    writer = SqlWriter(url, table, key="user", create=True)
    await writer.write(Frame(["ann", "bob"], {"top": np.asarray([[1, 2, 3], [4, 5, 6]])}))
    await writer.write(Frame(["ann"], {"top": np.asarray([[9, 9, 9]])}))
    retriever = SqlRetriever(url, table=table, key="user")
    got = await retriever.get(["ann", "bob", 7])
    await writer.close()
    await retriever.close()
    top = dict(zip(got.keys, got.columns["top"].tolist(), strict=True))
    if url.startswith("postgresql"):  # a BIGINT[] column there
        assert top == {"ann": [9, 9, 9], "bob": [4, 5, 6]}
    else:
        assert top == {"ann": "[9,9,9]", "bob": "[4,5,6]"}


async def test_large_lookups_match_the_keys_asked_for(url, table, monkeypatch) -> None:
    n = 3_000  # past COPY_MIN_ROWS: PostgreSQL answers with a binary COPY
    copies: list[str] = []
    copy_out = pgcopy.copy_out
    monkeypatch.setattr(pgcopy, "copy_out", lambda cur, q, *a, **k: copies.append(q) or copy_out(
        cur, q, *a, **k))
    writer = SqlWriter(url, table, create=True, columns=["score", "predictions"])
    await writer.write(scores(n))
    retriever = SqlRetriever(url, table=table)
    as_ints = await retriever.get([*range(10, 2_010), 10**6])  # the last has no row
    as_text = await retriever.get([str(k) for k in range(1_000, 2_500)])
    await writer.close()
    await retriever.close()
    assert sorted(as_ints.keys) == list(range(10, 2_010))  # type: ignore[type-var]
    score = dict(zip(as_ints.keys, as_ints.columns["score"].tolist(), strict=True))
    assert score[1_800] == pytest.approx(1_800 / (n - 1))
    assert as_ints.columns["predictions"].dtype.kind == "i"
    assert sorted(as_text.keys, key=int) == [str(k) for k in range(1_000, 2_500)]
    assert len(copies) == (2 if url.startswith("postgresql") else 0)


async def test_large_frames_with_nan_and_json_text_take_the_general_path(url, table) -> None:
    double = "DOUBLE" if "mysql" in url else "DOUBLE PRECISION"
    execute(url, f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, score {double}, "
                 "probabilities TEXT)")
    frame = scores(2_000)
    frame.columns["score"][7] = np.nan  # no room for NULL in a binary COPY of doubles
    writer = SqlWriter(url, table, columns=["score", "probabilities"])
    await writer.write(frame)
    await writer.close()
    rows = dict((r[0], r[1:]) for r in execute(url, f"SELECT * FROM {table}"))
    assert len(rows) == 2_000 and rows[7][0] is None
    assert orjson.loads(rows[1_999][1]) == pytest.approx([0.0, 1.0])  # an existing TEXT
    assert rows[8][0] == pytest.approx(8 / 1_999)


async def test_on_postgresql_a_lost_connection_is_an_outage_and_the_next_write_reconnects(
        pg, table) -> None:
    writer = SqlWriter(pg, table, create=True, columns=["score"])
    await writer.start()
    await writer.write(scores(100))
    await writer.write(scores(100, start=100))  # on the loop: its connection is kept
    execute(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    with pytest.raises(NotReady, match="unavailable"):
        await writer.write(scores(100, start=200))
    await writer.write(scores(100, start=200))  # a connection of its own again
    await writer.close()
    assert execute(pg, f"SELECT count(*) FROM {table}") == [(300,)]


async def test_on_postgresql_a_value_the_table_refuses_is_named(pg, table) -> None:
    execute(pg, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, "
                 "score DOUBLE PRECISION CHECK (score <= 0.5))")
    writer = SqlWriter(pg, table, columns=["score"])
    await writer.start()
    first = scores(100)
    first.columns["score"] = first.columns["score"] / 2
    await writer.write(first)
    with pytest.raises(ModelportError, match="violates check constraint") as refused:
        await writer.write(scores(100, start=100))  # on the loop: up to 1.0
    assert not isinstance(refused.value, NotReady)
    await writer.close()
    assert execute(pg, f"SELECT count(*) FROM {table}") == [(100,)]


async def test_a_created_table_takes_columns_that_later_frames_bring(url, table) -> None:
    # a stream's first messages may have no envelope `key`; the first one that has
    # one must not stop the worker with "table has no column(s) key"
    writer = SqlWriter(url, table, create=True)
    await writer.start()
    try:
        first = scores(100)
        await writer.write(Frame(first.keys, {"score": first.columns["score"]}))
        later = Frame([98, 99, 100, 101],
                      {"score": [0.25, 0.5, 0.75, 1.0], "key": [7, 8, 9, 10]})
        await writer.write(later)
        await writer.write(Frame([102], {"score": [0.5], "key": [11], "note": ["late"]}))
    finally:
        await writer.close()
    rows = execute(url, f"SELECT id, score, {'`key`' if 'mysql' in url else 'key'}, note "
                        f"FROM {table} WHERE id >= 97 ORDER BY id")
    assert rows == [(97, pytest.approx(97 / 99), None, None), (98, 0.25, 7, None),
                    (99, 0.5, 8, None), (100, 0.75, 9, None), (101, 1.0, 10, None),
                    (102, 0.5, 11, "late")]
    # without create, a missing column is still an error (test_configuration_errors…)


async def test_frames_written_at_once_to_a_table_not_made_yet(url, table) -> None:
    # a batch job writes up to three chunks at once: each may find the table missing
    # and try to create it; the ones that lose the race write into the winner's table
    writer = SqlWriter(url, table, create=True)
    await writer.start()
    try:
        await asyncio.gather(*(writer.write(scores(10, start=10 * i)) for i in range(8)))
    finally:
        await writer.close()
    assert execute(url, f"SELECT COUNT(*) FROM {table}") == [(80,)]


async def test_two_writers_creating_one_table_at_once_both_write_into_it(url, table) -> None:
    # two workers (or jobs) whose writer creates the table: both find it missing and
    # CREATE it; the one that loses takes the winner's table and writes into it
    writers = [SqlWriter(url, table, create=True) for _ in range(2)]
    for writer in writers:
        await writer.start()
    try:
        await asyncio.gather(*(writers[i % 2].write(scores(10, start=10 * i))
                               for i in range(6)))
        # the table each writer holds is the one in the database: a later frame with
        # a column neither made yet is added once, and read back by both
        late = Frame([1000], {"score": [0.5], "note": ["late"]})
        await writers[0].write(late)
        await writers[1].write(Frame([1001], {"score": [0.25], "note": ["later"]}))
    finally:
        for writer in writers:
            await writer.close()
    assert execute(url, f"SELECT COUNT(*), COUNT(DISTINCT id) FROM {table}") == [(62, 62)]
    assert execute(url, f"SELECT id, note FROM {table} WHERE note IS NOT NULL "
                        "ORDER BY id") == [(1000, "late"), (1001, "later")]


async def test_configuration_errors_are_clear(url, table) -> None:
    with pytest.raises(ConfigError, match="either 'table' or 'query'"):
        SqlRetriever(url)
    retriever, writer = SqlRetriever(url, table=table), SqlWriter(url, table)
    query = SqlRetriever(url, key="id", query=f"SELECT nope FROM {table}")
    picky = SqlWriter(url, table, columns=["nope"])
    try:
        with pytest.raises(ConfigError, match=f"has no table.*{table}"):
            await retriever.start()
        with pytest.raises(ConfigError, match=f"has no table.*{table}"):
            await writer.start()
        double = "DOUBLE" if "mysql" in url else "DOUBLE PRECISION"
        execute(url, f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, score {double})")
        with pytest.raises(ConfigError, match=r"has no column\(s\) label"):
            await writer.write(Frame([1], {"score": [0.5], "label": ["x"]}))
        with pytest.raises(ConfigError, match="the results have no column"):
            await picky.write(Frame([1], {"score": [0.5]}))
        with pytest.raises(ModelportError, match="SQL database") as info:
            await query.get([1])
        assert info.value.status_code == 500  # a wrong query is not an outage
    finally:
        for component in (retriever, writer, query, picky):
            await component.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
async def test_an_unreachable_server_is_a_503_naming_it_without_password(scheme) -> None:
    port = free_port()  # nothing listens there
    url = f"{scheme}://someone:s3cret@127.0.0.1:{port}/test"
    retriever = SqlRetriever(url, table="features")
    with pytest.raises(NotReady) as info:
        await retriever.start()
    assert f"127.0.0.1:{port}" in info.value.message and "s3cret" not in info.value.message
    assert info.value.message.startswith("SQL database")
    assert info.value.status_code == 503
    with pytest.raises(NotReady):
        await retriever.get([1])
    with pytest.raises(NotReady):
        await SqlWriter(url, "scores").write(Frame([1], {"score": [1.0]}))
    await retriever.close()


def test_unknown_driver_names_the_extra() -> None:
    with pytest.raises(ConfigError, match="not a database URL"):
        SqlRetriever("not a url", table="t").engine  # noqa: B018
