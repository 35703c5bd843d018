"""The SQL writer's strategies, through their own interface: which one a database
gets, and the way each frame takes (`Way`) with the rows it leaves in the table."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import MetaData, Table
from test_sql import MYSQL_HOST, MYSQL_PORT, MYSQL_URL, execute, scores

from conftest import require_service
from modelport.pipeline import Frame
from modelport.pipeline.sqlstrategies import (
    PostgresCopy,
    RowsUpsert,
    Way,
    WriteStrategy,
)
from modelport.pipeline.sqlwrite import SqlWriter


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_server_url"))
    require_service("MariaDB", MYSQL_HOST, MYSQL_PORT)
    return MYSQL_URL


@pytest.fixture
def pg(pg_server_url: str) -> str:
    return pg_server_url


@pytest.fixture
def table(request: pytest.FixtureRequest) -> Iterator[str]:
    """A table name no other test uses, dropped afterwards."""
    name = f"mp_{uuid.uuid4().hex[:12]}"
    yield name
    url = request.getfixturevalue("pg" if "pg" in request.fixturenames else "url")
    execute(url, f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
async def writer(url: str, table: str) -> AsyncIterator[SqlWriter]:
    """A started writer on `table` (created by the test beforehand)."""
    writer = SqlWriter(url, table)
    yield writer
    await writer.close()


def bigint_table(url: str, table: str, *columns: str) -> None:
    execute(url, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, {', '.join(columns)})")


async def strategy_of(writer: SqlWriter) -> tuple[WriteStrategy, Table]:
    await writer.start()
    return writer.strategy, Table(writer.table, MetaData(), autoload_with=writer.engine)


async def test_each_database_gets_its_strategy_once(writer: SqlWriter, url: str,
                                                    table: str) -> None:
    bigint_table(url, table, "score DOUBLE PRECISION")
    strategy, _ = await strategy_of(writer)
    assert strategy is writer.strategy  # chosen at start, kept
    if url.startswith("postgresql"):
        assert type(strategy) is PostgresCopy and writer.max_concurrent_writes == 4
    elif url.startswith("sqlite"):  # one writer at a time
        assert type(strategy) is RowsUpsert and writer.max_concurrent_writes == 1
    else:
        assert type(strategy) is RowsUpsert and writer.max_concurrent_writes == 4


async def test_other_databases_upsert_every_frame_by_executemany(
        writer: SqlWriter, url: str, table: str) -> None:
    if url.startswith("postgresql"):
        pytest.skip("PostgreSQL has its own strategy")
    bigint_table(url, table, "score DOUBLE PRECISION, probabilities TEXT")
    strategy, t = await strategy_of(writer)
    names = ["score", "probabilities"]
    assert await strategy.write(t, scores(2_000), names) == Way.ROWS_UPSERT
    changed = scores(10, start=1_995)
    changed.columns["score"] = changed.columns["score"] + 10
    assert await strategy.write(t, changed, names) == Way.ROWS_UPSERT
    rows = dict((r[0], r[1:]) for r in execute(url, f"SELECT * FROM {t.name}"))
    assert len(rows) == 2_005 and rows[1_000][0] == pytest.approx(1_000 / 1_999)
    assert rows[1_999][0] == pytest.approx(10 + 4 / 9)
    assert orjson.loads(rows[2_004][1]) == pytest.approx([0.0, 1.0])


@pytest.fixture
async def pg_copy(pg: str, table: str) -> AsyncIterator[
        tuple[PostgresCopy, Table]]:
    """PostgreSQL's strategy on a table of scores, trying COPY again after one frame."""
    bigint_table(pg, table, "score DOUBLE PRECISION",
                 "probabilities DOUBLE PRECISION[]")
    writer = SqlWriter(pg, table)
    await writer.start()
    strategy = PostgresCopy(writer.engine, "id", after_conflict=1)
    yield strategy, Table(table, MetaData(), autoload_with=writer.engine)
    await strategy.close()
    await writer.close()


async def test_on_postgresql_new_keys_go_straight_in_and_existing_ones_are_upserted(
        pg_copy: tuple[PostgresCopy, Table], pg: str) -> None:
    strategy, t = pg_copy
    names = ["score", "probabilities"]

    async def write(n: int, start: int, bump: float = 0.0) -> Way:
        frame = scores(n, start)
        frame.columns["score"] = frame.columns["score"] + bump
        return await strategy.write(t, frame, names)

    assert await write(2_000, 0) == Way.COPY  # the column types learnt in a thread
    assert await write(500, 2_000) == Way.COPY_ON_LOOP  # new keys: on the loop
    assert await write(2_000, 1_000, 10) == Way.COPY_UPSERT  # refused on the loop
    assert await write(1_000, 5_000) == Way.COPY_UPSERT  # just after: not tried
    assert await write(1_000, 7_000) == Way.COPY_ON_LOOP  # tried again
    assert await write(10, 9_000) == Way.ROWS_UPSERT  # a few rows: one statement
    with_nan = scores(1_000, 10_000)  # NaN is NULL: no room for it in binary COPY
    with_nan.columns["score"][7] = float("nan")
    assert await strategy.write(t, with_nan, names) == Way.TEXT_COPY_UPSERT
    rows = dict(execute(pg, f"SELECT id, score FROM {t.name}"))
    assert len(rows) == 6_010 and rows[999] == pytest.approx(999 / 1_999)
    assert rows[1_000] == pytest.approx(10.0) and rows[2_999] == pytest.approx(11.0)
    assert rows[2_499] == pytest.approx(10 + 1_499 / 1_999)
    assert rows[10_007] is None and rows[9_009] == pytest.approx(1.0)


async def test_on_postgresql_a_conflict_in_a_thread_upserts_the_next_frame_too(
        pg_copy: tuple[PostgresCopy, Table], pg: str) -> None:
    strategy, t = pg_copy
    names = ["score", "probabilities"]
    execute(pg, f"INSERT INTO {t.name} (id, score) VALUES (5, 0.0)")
    assert await strategy.write(t, scores(100), names) == Way.COPY_UPSERT  # in a thread
    assert await strategy.write(t, scores(100, 100), names) == Way.COPY_UPSERT
    assert await strategy.write(t, scores(100, 200), names) == Way.COPY_ON_LOOP
    assert execute(pg, f"SELECT count(*) FROM {t.name}") == [(300,)]


async def test_text_keys_and_json_text_columns_are_upserted_in_bulk(
        writer: SqlWriter, url: str, table: str) -> None:
    execute(url, f"CREATE TABLE {table} (id VARCHAR(64) PRIMARY KEY, probabilities TEXT, "
                 f"label TEXT, predictions BIGINT)")
    strategy, t = await strategy_of(writer)
    names = ["probabilities", "label", "predictions"]

    def frame(start: int, n: int, bump: int) -> Frame:
        f = scores(n, start)
        f.keys = [f"msg-{k}" for k in f.keys]  # the ids a stream's messages carry
        f.columns["predictions"] = f.columns["predictions"] + bump
        return f

    ways = [await strategy.write(t, frame(0, 200, 0), names),  # new keys
            await strategy.write(t, frame(100, 200, 10), names)]  # half already there
    rows = {r[0]: r[1:] for r in execute(url, f"SELECT * FROM {table}")}
    assert len(rows) == 300
    assert rows["msg-50"][2] in (0, 1) and rows["msg-150"][2] >= 10  # the later write won
    assert orjson.loads(rows["msg-0"][0]) == pytest.approx([1.0, 0.0])
    assert rows["msg-120"][1] == "user-20"
    if url.startswith("postgresql"):  # binary COPY of text and JSON text
        assert ways == [Way.COPY, Way.COPY_UPSERT]
    else:
        assert ways == [Way.ROWS_UPSERT, Way.ROWS_UPSERT]


async def test_on_postgresql_frames_written_at_once_all_land(
        pg_copy: tuple[PostgresCopy, Table], pg: str) -> None:
    # a stream worker writes up to four frames at once, on the loop and in threads;
    # some meet keys already there
    strategy, t = pg_copy
    names = ["score", "probabilities"]
    await strategy.write(t, scores(100), names)
    ways = await asyncio.gather(*(strategy.write(t, scores(100, start=50 * i), names)
                                  for i in range(1, 9)))
    assert Way.COPY_UPSERT in ways
    assert execute(pg, f"SELECT count(*), count(DISTINCT id) FROM {t.name}") \
        == [(500, 500)]
