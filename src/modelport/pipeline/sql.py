"""SQL tables and queries as pipeline components (SQLAlchemy).

PostgreSQL (`postgresql://`, psycopg 3: the `postgres` extra), MariaDB/MySQL
(`mysql://` or `mariadb://`, PyMySQL: the `mysql` extra) and SQLite (`sqlite:///file`).

- `SqlRetriever` looks many keys up in one statement (`key = ANY(:keys)` on
  PostgreSQL, an `IN (...)` list elsewhere, split past `IN_CHUNK` keys) and scans a
  table or query through a server-side cursor, so memory stays bounded.
- `SqlWriter` upserts on the key (`ON CONFLICT … DO UPDATE`, MariaDB's `ON DUPLICATE
  KEY UPDATE`), one transaction per frame, so a retried chunk leaves one row per key.

The drivers block, so every database call runs in a worker thread; the engine's pool
(`pool_pre_ping`) replaces connections a restart or an outage broke. Engines and error
translation live in `sqlconn.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Double,
    MetaData,
    String,
    Table,
    Text,
    any_,
    bindparam,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql import Executable
from sqlalchemy.types import TypeEngine

from modelport.errors import ConfigError
from modelport.pipeline.base import Frame, Key, Retriever, Writer
from modelport.pipeline.columns import KeyMatch, cells, column, dedupe_last, plain_keys
from modelport.pipeline.sqlconn import SqlComponent

IN_CHUNK = 10_000
"""Keys per `IN (...)` list: well under SQLite's 32,766 and PostgreSQL's 65,535 bound
parameters per statement, and a statement size MariaDB takes with default settings."""
ANY_CHUNK = 100_000
"""Keys per PostgreSQL array parameter (one parameter; bounded only for memory)."""
COPY_MIN_ROWS = 1_000
"""Frames this large are upserted on PostgreSQL through COPY into a temporary table:
about twice the rows/s of executemany (docs/pipelines.md has the measurements)."""
_KEYS_PARAM = re.compile(r"(?<![:\w]):keys\b")


class SqlRetriever(SqlComponent, Retriever):
    """Rows of `table` by its `key` column, or of a `query`.

    `query` either has an expanding `:keys` parameter (`... WHERE user_id IN :keys`) and
    serves `get` only, or has none: then `get` filters it as a subquery on `key` and
    `scan` streams it. `columns` picks a table's columns (default: all); the key column
    becomes the frame's keys, not a column.
    """

    def __init__(self, url: str, table: str | None = None, key: str = "id",
                 query: str | None = None, columns: Sequence[str] | None = None) -> None:
        super().__init__(url)
        if (table is None) == (query is None):
            raise ConfigError("sql retriever: give either 'table' or 'query'")
        if query is not None and columns:
            raise ConfigError("sql retriever: 'columns' apply to a table; with a query, "
                              "select the columns in the query")
        self.table, self.key, self.query = table, key, query
        self.columns = list(columns) if columns else None
        self._table: Table | None = None

    async def start(self) -> None:
        await super().start()
        if self.table is not None:
            with self.errors():
                await asyncio.to_thread(self._reflect)

    def _reflect(self) -> Table:
        if self._table is None:
            assert self.table is not None
            table = self._load_table(self.table)
            wanted = [self.key, *(self.columns or [])]
            missing = [c for c in wanted if c not in table.c]
            if missing:
                raise ConfigError(f"{self.where}: table {self.table!r} has no column(s) "
                                  f"{', '.join(map(repr, missing))}")
            self._table = table
        return self._table

    async def get(self, keys: Sequence[Key]) -> Frame:
        if not keys:
            return Frame([], {})
        with self.errors():
            return await asyncio.to_thread(self._get, list(keys))

    def _get(self, keys: list[Key]) -> Frame:
        statement, values, size = self._lookup(keys)
        if not values:  # no key could be one of the table's
            return Frame([], {})
        names: list[str] = []
        rows: list[Any] = []
        with self.engine.connect() as conn:
            for i in range(0, len(values), size):
                result = conn.execute(statement, {"keys": values[i:i + size]})
                names = list(result.keys())
                rows.extend(result.fetchall())
        return self._frame(names, rows, KeyMatch(keys))

    def _lookup(self, keys: list[Key]) -> tuple[Executable, list[Any], int]:
        """The statement for a chunk of keys, the keys as the database takes them, and
        how many keys one statement may carry."""
        if self.query is not None:
            if _KEYS_PARAM.search(self.query):
                statement = text(self.query)
            else:
                quoted = self.engine.dialect.identifier_preparer.quote(self.key)
                statement = text(f"SELECT * FROM ({self.query.strip().rstrip(';')}) "
                                 f"AS mp_rows WHERE mp_rows.{quoted} IN :keys")
            return (statement.bindparams(bindparam("keys", expanding=True)),
                    plain_keys(keys), IN_CHUNK)
        table = self._reflect()
        key = table.c[self.key]
        chosen = [key, *self._columns(table)]
        values = _coerce(plain_keys(keys), key.type)
        if self.engine.dialect.name == "postgresql":
            # one array parameter: one statement shape whatever the number of keys
            condition = key == any_(bindparam("keys", type_=ARRAY(key.type)))
            return select(*chosen).where(condition), values, ANY_CHUNK
        return (select(*chosen).where(key.in_(bindparam("keys", expanding=True))),
                values, IN_CHUNK)

    def _columns(self, table: Table) -> list[Column[Any]]:
        names = self.columns or [c.name for c in table.c if c.name != self.key]
        return [table.c[n] for n in names]

    def _frame(self, names: list[str], rows: Sequence[Sequence[Any]],
               match: KeyMatch | None) -> Frame:
        if self.key not in names:
            raise ConfigError(f"{self.where}: the query returns no key column {self.key!r} "
                              f"(it returns {', '.join(names)})")
        at = names.index(self.key)
        if not rows:
            return Frame([], {n: column([]) for i, n in enumerate(names) if i != at})
        transposed = list(zip(*rows, strict=True))
        found = transposed[at]
        keys: list[Key] = list(found) if match is None else [match(k) for k in found]
        columns = {n: column(v) for i, (n, v) in enumerate(zip(names, transposed, strict=True))
                   if i != at}
        frame = Frame(keys, columns)
        if match is not None and None in keys:  # rows for keys nobody asked for
            frame = frame.take([i for i, k in enumerate(keys) if k is not None])
        return frame

    async def scan(self, chunk_size: int) -> AsyncIterator[Frame]:
        """Every row in chunks, through a server-side cursor; a table comes in key order
        (so a batch job can say how far it got), a query in its own order."""
        with self.errors():
            statement = await asyncio.to_thread(self._scan_statement)
            conn = await asyncio.to_thread(self.engine.connect)
            try:
                streaming = conn.execution_options(stream_results=True, yield_per=chunk_size)
                result = await asyncio.to_thread(streaming.execute, statement)
                names = list(result.keys())
                while rows := await asyncio.to_thread(result.fetchmany, chunk_size):
                    yield self._frame(names, rows, None)
            finally:
                await asyncio.to_thread(conn.close)

    def _scan_statement(self) -> Executable:
        if self.query is None:
            table = self._reflect()
            key = table.c[self.key]
            return select(key, *self._columns(table)).order_by(key)
        if _KEYS_PARAM.search(self.query):
            raise ConfigError("sql retriever: a query with :keys cannot be scanned; give "
                              "one without it (get() then filters it on the key column)")
        return text(self.query)


def _coerce(keys: list[Any], type_: TypeEngine[Any]) -> list[Any]:
    """Keys as the key column's Python type; a key that cannot be one is not in the table
    (an HTTP caller's "abc" for an integer key is "no data", not a database error)."""
    try:
        python_type = type_.python_type
    except NotImplementedError:
        return keys
    out = []
    for k in keys:
        try:
            out.append(k if isinstance(k, python_type) else python_type(k))
        except (TypeError, ValueError, ArithmeticError):
            continue
    return out


class SqlWriter(SqlComponent, Writer):
    """Upserts each frame into `table` on its `key` column, in one transaction.

    `columns` picks the frame's columns to store (default: all). With `create=True` a
    missing table is created at the first write from that frame: integers → BIGINT,
    floats → DOUBLE, booleans → BOOLEAN, anything else → TEXT, the key (BIGINT, or
    VARCHAR(255) for other keys) as primary key. A multi-dimensional output such as
    class probabilities `[N, 2]` is one TEXT column holding a JSON array per row: one
    column per output name, whatever its shape, readable with every database's JSON
    functions. NaN is stored as NULL.
    """

    def __init__(self, url: str, table: str, key: str = "id", create: bool = False,
                 columns: Sequence[str] | None = None) -> None:
        super().__init__(url)
        self.table, self.key, self.create = table, key, create
        self.columns = list(columns) if columns else None
        self._table: Table | None = None

    async def start(self) -> None:
        await super().start()
        with self.errors():
            await asyncio.to_thread(self._existing)

    def _existing(self) -> Table | None:
        if self._table is None:
            try:
                self._table = self._load_table(self.table)
            except sa_exc.NoSuchTableError:
                if not self.create:
                    raise
        return self._table

    async def write(self, frame: Frame) -> None:
        if not len(frame):
            return
        frame = dedupe_last(frame)
        names = self.columns or list(frame.columns)
        absent = [n for n in names if n not in frame.columns]
        if absent:
            raise ConfigError(f"sql writer: the results have no column(s) {', '.join(absent)} "
                              f"(they have {', '.join(frame.columns)})")
        with self.errors():
            # converting a large frame takes a while: not on the event loop's thread
            await asyncio.to_thread(self._write, frame, names)

    def _write(self, frame: Frame, names: list[str]) -> None:
        values = [plain_keys(frame.keys), *(cells(frame.columns[n]) for n in names)]
        rows = list(zip(*values, strict=True))
        table = self._existing()
        if table is None:
            table = self._create(frame, names)
        missing = [n for n in names if n not in table.c]
        if missing:
            raise ConfigError(f"{self.where}: table {self.table!r} has no column(s) "
                              f"{', '.join(missing)}; add them, or list the ones to store "
                              "in the writer's 'columns'")
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql" and len(rows) >= COPY_MIN_ROWS:
                self._copy_upsert(conn, table, names, rows)
            else:
                conn.exec_driver_sql(self._upsert_sql(table, [self.key, *names]), rows)

    def _create(self, frame: Frame, names: list[str]) -> Table:
        keys = plain_keys(frame.keys)
        key_type: TypeEngine[Any] = BigInteger() if all(
            isinstance(k, int) and not isinstance(k, bool) for k in keys) else String(255)
        schema, _, name = self.table.rpartition(".")
        table = Table(name, MetaData(), Column(self.key, key_type, primary_key=True,
                                                    autoincrement=False),
                      *(Column(n, _sql_type(frame.columns[n])) for n in names),
                      schema=schema or None)
        # another writer may create it between our check and our CREATE
        with contextlib.suppress(sa_exc.ProgrammingError, sa_exc.IntegrityError):
            table.create(self.engine, checkfirst=True)
        self._table = self._load_table(self.table)
        return self._table

    def _upsert_sql(self, table: Table, names: list[str]) -> str:
        dialect = self.engine.dialect
        qmark = dialect.paramstyle in ("qmark", "numeric")
        mark = "?" if qmark else "%s"

        def escape(sql: str) -> str:  # %-style drivers read a bare % as a placeholder
            return sql if qmark else sql.replace("%", "%%")

        cols = [escape(dialect.identifier_preparer.quote(n)) for n in names]
        target = escape(dialect.identifier_preparer.format_table(table))
        marks = ", ".join([mark] * len(cols))
        return f"INSERT INTO {target} ({', '.join(cols)}) VALUES ({marks})" \
            + self._on_conflict(cols)

    def _on_conflict(self, cols: list[str]) -> str:
        key, rest = cols[0], cols[1:]
        if self.engine.dialect.name in ("mysql", "mariadb"):
            updates = ", ".join(f"{c} = VALUES({c})" for c in rest) or f"{key} = {key}"
            return f" ON DUPLICATE KEY UPDATE {updates}"
        if not rest:
            return f" ON CONFLICT ({key}) DO NOTHING"
        return f" ON CONFLICT ({key}) DO UPDATE SET " + ", ".join(
            f"{c} = excluded.{c}" for c in rest)

    def _copy_upsert(self, conn: Connection, table: Table, names: list[str],
                     rows: list[tuple[Any, ...]]) -> None:
        """COPY into a temporary table, then one INSERT … SELECT … ON CONFLICT."""
        quote = conn.dialect.identifier_preparer.quote
        cols = ", ".join(quote(n) for n in [self.key, *names])
        target = conn.dialect.identifier_preparer.format_table(table)
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE mp_stage ON COMMIT DROP AS "
                             f"SELECT {cols} FROM {target} WITH NO DATA")
        raw: Any = conn.connection.driver_connection  # psycopg's own, which has COPY
        dbapi = conn.dialect.loaded_dbapi
        try:
            with raw.cursor() as cursor, cursor.copy(f"COPY mp_stage ({cols}) FROM STDIN") \
                    as copy:
                for row in rows:
                    copy.write_row(row)
        except dbapi.Error as exc:
            # outside SQLAlchemy's execute: wrap it as SQLAlchemy would have
            raise sa_exc.DBAPIError.instance(
                "COPY", None, exc, dbapi.Error, dialect=conn.dialect,
                connection_invalidated=conn.dialect.is_disconnect(exc, raw, None)) from exc
        conn.exec_driver_sql(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM mp_stage"
                             + self._on_conflict([quote(n) for n in [self.key, *names]]))


def _sql_type(values: Any) -> TypeEngine[Any]:
    arr = values if hasattr(values, "dtype") else column(list(values))
    if arr.ndim != 1:
        return Text()
    kinds: dict[str, TypeEngine[Any]] = {
        "b": Boolean(), "i": BigInteger(), "u": BigInteger(), "f": Double()}
    return kinds.get(arr.dtype.kind, Text())
