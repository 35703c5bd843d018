"""The SQL writer: results upserted on their key, one transaction per frame.

On PostgreSQL a frame of `BINARY_MIN_ROWS` rows or more whose values fit binary COPY
(numbers, strings, multi-dimensional outputs as arrays or JSON text; `pgcopy.encode`)
goes by COPY, made by numpy in a few calls. It is tried straight into the table first
(on the event loop: `pgasync`): a frame of new keys (a first run, new messages) is
then written for less than half the database's work of an upsert. When a key is
already there, the COPY is rolled back and the frame is COPY-ed into a temporary
staging table and merged with one `INSERT … SELECT … ON CONFLICT`. Frames of
`COPY_MIN_ROWS` or more that do not fit binary COPY (NaN, which is NULL) take a text
COPY through the staging table. Smaller frames, and other databases, take one
`executemany`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
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
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.types import ARRAY as AnyArray
from sqlalchemy.types import TypeEngine

from modelport.datatypes import jsonable
from modelport.errors import ConfigError
from modelport.pipeline import pgcopy
from modelport.pipeline.base import Frame, Writer
from modelport.pipeline.columns import cells, column, dedupe_last, plain_keys
from modelport.pipeline.pgasync import AsyncCopier
from modelport.pipeline.sqlconn import SqlComponent, driver_errors

BINARY_MIN_ROWS = 64
"""Frames this large are written on PostgreSQL by binary COPY when their values fit it
(numbers, strings, JSON text): past a few dozen rows, far cheaper than executemany
(bench/stream.py writes frames of 256)."""
COPY_MIN_ROWS = 1_000
"""Frames this large are written on PostgreSQL by COPY even when only the text format
fits them: several times the rows/s of executemany."""
WRITE_CONCURRENCY = 4
"""Frames written at once on a database server (below the pool's 5 connections)."""
UPSERT_AFTER_CONFLICT = 16
"""Frames upserted without trying a plain COPY first, after one found a key there."""


class SqlWriter(SqlComponent, Writer):
    """Upserts each frame into `table` on its `key` column, in one transaction.

    `columns` picks the frame's columns to store (default: all). With `create=True` a
    missing table is created at the first write from that frame, and a column that a
    later frame brings is added, nullable (a stream's `key` appears with the first
    envelope that has one): integers → BIGINT, floats → DOUBLE, booleans → BOOLEAN,
    anything else → TEXT, the key (BIGINT, or VARCHAR(255) for other keys) as primary
    key. A multi-dimensional output such as
    class probabilities `[N, 2]` is one column per output name, whatever its shape: on
    PostgreSQL an array (`DOUBLE PRECISION[]`, `BIGINT[]`) per row, elsewhere a JSON
    array as TEXT (as in an existing TEXT or JSON column on PostgreSQL too). NaN is
    stored as NULL.
    """

    def __init__(self, url: str, table: str, key: str = "id", create: bool = False,
                 columns: Sequence[str] | None = None) -> None:
        super().__init__(url)
        self.table, self.key, self.create = table, key, create
        self.columns = list(columns) if columns else None
        self._table: Table | None = None
        self._oids: dict[str, list[int]] = {}
        self._upserts_left = 0
        self._copier: AsyncCopier | None = None
        self._creating = threading.Lock()

    async def start(self) -> None:
        await super().start()
        # each frame is its own transaction on a connection of its own; SQLite has one
        # writer at a time, and the others would wait on its lock
        self.max_concurrent_writes = \
            1 if self.engine.dialect.name == "sqlite" else WRITE_CONCURRENCY
        if self.engine.dialect.driver == "psycopg":
            self._copier = AsyncCopier(self.engine.url, WRITE_CONCURRENCY)
        with self.errors():
            await asyncio.to_thread(self._existing)

    async def close(self) -> None:
        if self._copier is not None:
            await self._copier.close()
            self._copier = None
        await super().close()

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
            if not await self._copy_on_loop(frame, names):
                # converting a large frame takes a while: not on the event loop's thread
                await asyncio.to_thread(self._write, frame, names)

    async def _copy_on_loop(self, frame: Frame, names: list[str]) -> bool:
        """The common write on PostgreSQL, a frame of new keys that fits binary COPY,
        straight into the table on the event loop (`pgasync`); False to go the general
        way: the first frame (the table's column types are not known yet), a frame
        that does not fit, and the upserts that follow a key already there."""
        table, copier = self._table, self._copier
        if copier is None or table is None or len(frame) < BINARY_MIN_ROWS \
                or self._upserts_left or any(n not in table.c for n in names):
            return False
        cols = self._columns(self.engine.dialect, [self.key, *names])
        oids = self._oids.get(cols)
        data = pgcopy.encode(_arrays(frame, names), oids) if oids is not None else None
        if data is None:
            return False
        import psycopg

        try:
            await copier.copy(self._copy_into(table, cols), data)
        except psycopg.errors.UniqueViolation:
            self._upserts_left = UPSERT_AFTER_CONFLICT  # rolled back: upsert it instead
            return False
        except psycopg.Error as exc:
            raise sa_exc.DBAPIError.instance(
                "COPY", None, exc, psycopg.Error, dialect=self.engine.dialect,
                # a connection lost or refused: an outage, retried by the caller
                connection_invalidated=isinstance(exc, psycopg.OperationalError)) from exc
        return True

    def _write(self, frame: Frame, names: list[str]) -> None:
        table = self._existing()
        if table is None:
            table = self._create(frame, names)
        missing = [n for n in names if n not in table.c]
        if missing and self.create:
            table = self._add_columns(table, frame, missing)
        elif missing:
            raise ConfigError(f"{self.where}: table {self.table!r} has no column(s) "
                              f"{', '.join(missing)}; add them, or list the ones to store "
                              "in the writer's 'columns', or let the writer add them "
                              "('create: true')")
        data: bytes | None = None
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    data = self._binary(conn, table, names, frame) \
                        if len(frame) >= BINARY_MIN_ROWS else None
                    if data is not None and self._upserts_left:
                        self._upserts_left -= 1
                    elif data is not None:
                        self._insert(conn, table, names, data)
                        return
                    if data is not None or len(frame) >= COPY_MIN_ROWS:
                        self._copy_upsert(conn, table, names, frame, data)
                        return
                conn.exec_driver_sql(self._upsert_sql(table, [self.key, *names]),
                                     _rows(table, frame, names))
                return
        except _KeyExists:  # the plain COPY is rolled back: upsert instead
            self._upserts_left = UPSERT_AFTER_CONFLICT
        with self.engine.begin() as conn:
            self._copy_upsert(conn, table, names, frame, data)

    def _create(self, frame: Frame, names: list[str]) -> Table:
        # the first frames may be written side by side (threads): one creates the table
        with self._creating:
            if self._table is not None:
                return self._table
            return self._create_table(frame, names)

    def _create_table(self, frame: Frame, names: list[str]) -> Table:
        keys = plain_keys(frame.keys)
        key_type: TypeEngine[Any] = BigInteger() if all(
            isinstance(k, int) and not isinstance(k, bool) for k in keys) else String(255)
        schema, _, name = self.table.rpartition(".")
        dialect = self.engine.dialect.name
        table = Table(name, MetaData(), Column(self.key, key_type, primary_key=True,
                                                    autoincrement=False),
                      *(Column(n, _sql_type(frame.columns[n], dialect)) for n in names),
                      schema=schema or None)
        try:
            table.create(self.engine, checkfirst=True)
        except sa_exc.DBAPIError:
            # another write (this writer's own, on another thread, or another process)
            # may create it between our check and our CREATE: SQLite says so with an
            # OperationalError, PostgreSQL with a ProgrammingError or IntegrityError
            with contextlib.suppress(sa_exc.NoSuchTableError):
                self._table = self._load_table(self.table)
                return self._table
            raise
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

    def _binary(self, conn: Connection, table: Table, names: list[str],
                frame: Frame) -> bytes | None:
        """The frame as binary COPY data for the table's columns, if it fits."""
        cols = self._columns(conn.dialect, [self.key, *names])
        if cols not in self._oids:
            target = conn.dialect.identifier_preparer.format_table(table)
            raw: Any = conn.connection.driver_connection
            with driver_errors(conn, raw), raw.cursor() as cursor:
                self._oids[cols] = [oid for _, oid in pgcopy.describe(
                    cursor, f"SELECT {cols} FROM {target}")]
        return pgcopy.encode(_arrays(frame, names), self._oids[cols])

    def _copy_upsert(self, conn: Connection, table: Table, names: list[str],
                     frame: Frame, data: bytes | None) -> None:
        """COPY into a staging table, then one INSERT … SELECT … ON CONFLICT. `data` is
        the frame as binary COPY, or None for a text COPY."""
        cols = self._columns(conn.dialect, [self.key, *names])
        target = conn.dialect.identifier_preparer.format_table(table)
        raw: Any = conn.connection.driver_connection  # psycopg's own, which has COPY
        with driver_errors(conn, raw), raw.cursor() as cursor:
            # one staging table per connection and column list, emptied at each commit:
            # creating and dropping one per frame costs more than the COPY into it
            stage = "mp_stage_" + hashlib.sha256(f"{target}\0{cols}".encode()).hexdigest()[:16]
            cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE "
                           f"ROWS AS SELECT {cols} FROM {target} WITH NO DATA")
            if data is not None:
                with cursor.copy(f"COPY {stage} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(data)
            else:
                with cursor.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
                    for row in _rows(table, frame, names):
                        copy.write_row(row)
            quote = conn.dialect.identifier_preparer.quote
            cursor.execute(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage}"
                           + self._on_conflict([quote(n) for n in [self.key, *names]]))

    @staticmethod
    def _columns(dialect: Dialect, names: list[str]) -> str:
        quote = dialect.identifier_preparer.quote
        return ", ".join(quote(n) for n in names)

    def _copy_into(self, table: Table, cols: str) -> str:
        target = self.engine.dialect.identifier_preparer.format_table(table)
        return f"COPY {target} ({cols}) FROM STDIN (FORMAT BINARY)"

    def _insert(self, conn: Connection, table: Table, names: list[str], data: bytes) -> None:
        """COPY new rows straight into the table: less than half the database's work
        of an upsert. A key already there fails it (a unique violation, 23505), which
        raises `_KeyExists`: the transaction, holding nothing else, is rolled back and
        the caller upserts. After that, the next `UPSERT_AFTER_CONFLICT` frames are
        upserted without trying (a job that rescores existing rows fails at its first
        row, but fails every time)."""
        cols = self._columns(conn.dialect, [self.key, *names])
        raw: Any = conn.connection.driver_connection
        with driver_errors(conn, raw), raw.cursor() as cursor:
            try:
                with cursor.copy(self._copy_into(table, cols)) as copy:
                    copy.write(data)
            except conn.dialect.loaded_dbapi.Error as exc:
                if getattr(exc, "sqlstate", None) == "23505":
                    raise _KeyExists from exc
                raise


    def _add_columns(self, table: Table, frame: Frame, missing: list[str]) -> Table:
        """Columns a later frame brings (a stream's `key`, a field that rides along),
        added as at creation, nullable."""
        dialect = self.engine.dialect
        target = dialect.identifier_preparer.format_table(table)
        for name in missing:
            sql_type = _sql_type(frame.columns[name], dialect.name).compile(dialect=dialect)
            column_sql = dialect.identifier_preparer.quote(name)
            try:
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(f"ALTER TABLE {target} ADD COLUMN {column_sql} "
                                         f"{sql_type}")
            except sa_exc.DBAPIError:
                # another writer may have added it between our look and our ALTER
                if name not in self._load_table(self.table).c:
                    raise
        self._table = self._load_table(self.table)
        return self._table


class _KeyExists(Exception):
    """A plain COPY met a key already in the table."""


def _rows(table: Table, frame: Frame, names: list[str]) -> list[tuple[Any, ...]]:
    """The frame as tuples of plain Python values, each shaped for its column."""
    values = [plain_keys(frame.keys), *(_cells(frame.columns[n], table.c[n]) for n in names)]
    return list(zip(*values, strict=True))


def _cells(values: Any, col: Column[Any]) -> list[Any]:
    if isinstance(col.type, AnyArray):
        arr = values if isinstance(values, np.ndarray) else column(list(values))
        if arr.ndim > 1:  # an array per row; NaN is NULL there too, as in JSON
            return list(jsonable(arr))
        return cells(arr, nested="list")
    return cells(values)


def _arrays(frame: Frame, names: list[str]) -> list[np.ndarray]:
    if set(map(type, frame.keys)) == {str}:  # text ids (a stream's): no type to find
        keys = np.array(frame.keys, dtype=object)
    else:
        keys = column(plain_keys(frame.keys))  # ints → int64, strings → objects
    values = [frame.columns[n] for n in names]
    return [keys, *(v if isinstance(v, np.ndarray) else column(list(v)) for v in values)]


def _sql_type(values: Any, dialect: str) -> TypeEngine[Any]:
    arr = values if hasattr(values, "dtype") else column(list(values))
    kinds: dict[str, TypeEngine[Any]] = {
        "b": Boolean(), "i": BigInteger(), "u": BigInteger(), "f": Double()}
    if arr.ndim == 1:
        return kinds.get(arr.dtype.kind, Text())
    if dialect == "postgresql" and arr.ndim == 2 and arr.dtype.kind in "iuf":
        return ARRAY(kinds[arr.dtype.kind])
    return Text()

