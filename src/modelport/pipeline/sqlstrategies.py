"""How the SQL writer puts a frame into its table: one strategy per database, chosen
once when the writer starts (`for_engine`).

Every database takes an `executemany` of one upsert statement (`RowsUpsert`). On
PostgreSQL through psycopg, which has COPY, `PostgresCopy` writes a frame of
`BINARY_MIN_ROWS` rows or more whose values fit binary COPY (numbers, strings,
multi-dimensional outputs as arrays or JSON text; `pgcopy.encode`) by COPY, made by
numpy in a few calls. It is tried straight into the table first (on the event loop:
`pgasync`): a frame of new keys (a first run, new messages) is then written for less
than half the database's work of an upsert. When a key is already there, the COPY is
rolled back and the frame is COPY-ed into a temporary staging table and merged with one
`INSERT … SELECT … ON CONFLICT`. Frames of `COPY_MIN_ROWS` or more that do not fit
binary COPY (NaN, which is NULL) take a text COPY through the staging table. Smaller
frames take the `executemany`. Which of these a frame takes depends on its size and
values, so that choice stays per frame, inside the strategy.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import threading
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from sqlalchemy import Column, Connection, Engine, Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.types import ARRAY as AnyArray

from modelport.connections.sql import driver_errors
from modelport.datatypes import jsonable
from modelport.pipeline import pgcopy
from modelport.pipeline.base import Frame
from modelport.pipeline.columns import cells, column, plain_keys
from modelport.pipeline.pgasync import AsyncCopier

BINARY_MIN_ROWS = 64
"""Frames this large are written on PostgreSQL by binary COPY when their values fit it
(numbers, strings, JSON text): past a few dozen rows, far cheaper than executemany
(bench/stream.py writes frames of 256)."""
COPY_MIN_ROWS = 1_000
"""Frames this large are written on PostgreSQL by COPY even when only the text format
fits them: several times the rows/s of executemany."""
WRITE_CONCURRENCY = 4
"""Frames written at once on a database server (within the engine pool's size)."""
UPSERT_AFTER_CONFLICT = 16
"""Frames upserted without trying a plain COPY first, after one found a key there."""


class Way(enum.Enum):
    """How a frame was written: what `WriteStrategy.write` answers."""

    COPY_ON_LOOP = "binary COPY into the table, on the event loop"
    COPY = "binary COPY into the table, in a thread"
    COPY_UPSERT = "binary COPY into a staging table, merged"
    TEXT_COPY_UPSERT = "text COPY into a staging table, merged"
    ROWS_UPSERT = "executemany of one upsert statement"


class WriteStrategy(ABC):
    """Upserts frames on the `key` column of an existing table that has all their
    columns, each frame in one transaction."""

    def __init__(self, engine: Engine, key: str) -> None:
        self.engine, self.key = engine, key
        # each frame is its own transaction on a connection of its own; SQLite has one
        # writer at a time, and the others would wait on its lock
        self.concurrency = 1 if engine.dialect.name == "sqlite" else WRITE_CONCURRENCY

    @abstractmethod
    async def write(self, table: Table, frame: Frame, names: list[str]) -> Way:
        """`frame` (deduplicated, `names` all in `table`) upserted; how it went."""

    async def close(self) -> None:
        """Let go of what the strategy holds beside the engine (nothing here)."""
        return None


class RowsUpsert(WriteStrategy):
    """The way every database has: an `executemany` of one upsert statement."""

    async def write(self, table: Table, frame: Frame, names: list[str]) -> Way:
        # converting a large frame takes a while: not on the event loop's thread
        return await asyncio.to_thread(self._write, table, frame, names)

    def _write(self, table: Table, frame: Frame, names: list[str]) -> Way:
        with self.engine.begin() as conn:
            return self._execute(conn, table, frame, names)

    def _execute(self, conn: Connection, table: Table, frame: Frame,
                 names: list[str]) -> Way:
        conn.exec_driver_sql(self._upsert_sql(table, [self.key, *names]),
                             _rows(table, frame, names))
        return Way.ROWS_UPSERT

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

    def _columns(self, names: list[str]) -> str:
        quote = self.engine.dialect.identifier_preparer.quote
        return ", ".join(quote(n) for n in names)


class PostgresCopy(RowsUpsert):
    """PostgreSQL through psycopg: COPY for frames past a few dozen rows (see the module).

    `after_conflict`: frames upserted without trying a plain COPY first, after one met
    a key already there (a job that rescores existing rows fails at its first row, but
    fails every time)."""

    def __init__(self, engine: Engine, key: str,
                 after_conflict: int = UPSERT_AFTER_CONFLICT) -> None:
        super().__init__(engine, key)
        self._conflicts = _Conflicts(after_conflict)
        self._oids: dict[str, list[int]] = {}
        """The type OIDs of a table's columns, by column list: learnt in a thread at
        the first frame that may fit binary COPY, then read on the event loop."""
        self._copier = AsyncCopier(engine.url, WRITE_CONCURRENCY)
        self._statements: dict[tuple[str | None, str, str], str] = {}

    async def write(self, table: Table, frame: Frame, names: list[str]) -> Way:
        if len(frame) < BINARY_MIN_ROWS:  # below COPY_MIN_ROWS too
            return await super().write(table, frame, names)
        upsert = self._conflicts.skip()
        cols = self._columns([self.key, *names])
        oids = self._oids.get(cols)
        if oids is None:  # the column types are learnt in the thread
            return await asyncio.to_thread(self._write_copy, table, frame, names, upsert)
        data = pgcopy.encode(_arrays(frame, names), oids)
        if data is not None and not upsert:
            if await self._copy_on_loop(table, cols, data):
                return Way.COPY_ON_LOOP
            upsert = True  # refused: a key is there already
        return await asyncio.to_thread(self._write_copy, table, frame, names, upsert,
                                       (data,))

    async def close(self) -> None:
        await self._copier.close()

    async def _copy_on_loop(self, table: Table, cols: str, data: bytes) -> bool:
        """The common write, a frame of new keys, straight into the table without a
        thread; False when a key is there already (rolled back)."""
        import psycopg

        try:
            await self._copier.copy(self._copy_into(table, cols), data)
        except psycopg.errors.UniqueViolation:
            self._conflicts.met()
            return False
        except psycopg.Error as exc:
            raise sa_exc.DBAPIError.instance(
                "COPY", None, exc, psycopg.Error, dialect=self.engine.dialect,
                # a connection lost or refused: an outage, retried by the caller
                connection_invalidated=isinstance(exc, psycopg.OperationalError)) from exc
        return True

    def _write_copy(self, table: Table, frame: Frame, names: list[str], upsert: bool,
                    encoded: tuple[bytes | None] | None = None) -> Way:
        """A frame of `BINARY_MIN_ROWS` or more, in a thread: straight in unless
        `upsert`, through the staging table if a key is there, or `executemany`.
        `encoded`: the frame as binary COPY data already made (None: it does not fit)."""
        data = encoded[0] if encoded else None
        try:
            with self.engine.begin() as conn:
                if encoded is None:
                    data = self._binary(conn, table, names, frame)
                if data is not None and not upsert:
                    self._insert(conn, table, names, data)
                    return Way.COPY
                if data is not None or len(frame) >= COPY_MIN_ROWS:
                    return self._copy_upsert(conn, table, names, frame, data)
                return self._execute(conn, table, frame, names)
        except _KeyExists:  # the plain COPY is rolled back: upsert instead
            self._conflicts.met()
        with self.engine.begin() as conn:
            return self._copy_upsert(conn, table, names, frame, data)

    def _binary(self, conn: Connection, table: Table, names: list[str],
                frame: Frame) -> bytes | None:
        """The frame as binary COPY data for the table's columns, if it fits."""
        cols = self._columns([self.key, *names])
        if cols not in self._oids:
            target = conn.dialect.identifier_preparer.format_table(table)
            raw: Any = conn.connection.driver_connection
            with driver_errors(conn, raw), raw.cursor() as cursor:
                self._oids[cols] = [oid for _, oid in pgcopy.describe(
                    cursor, f"SELECT {cols} FROM {target}")]
        return pgcopy.encode(_arrays(frame, names), self._oids[cols])

    def _insert(self, conn: Connection, table: Table, names: list[str], data: bytes) -> None:
        """COPY new rows straight into the table: less than half the database's work
        of an upsert. A key already there fails it (a unique violation, 23505), which
        raises `_KeyExists`: the transaction, holding nothing else, is rolled back and
        the caller upserts."""
        cols = self._columns([self.key, *names])
        raw: Any = conn.connection.driver_connection
        with driver_errors(conn, raw), raw.cursor() as cursor:
            try:
                with cursor.copy(self._copy_into(table, cols)) as copy:
                    copy.write(data)
            except conn.dialect.loaded_dbapi.Error as exc:
                if getattr(exc, "sqlstate", None) == "23505":
                    raise _KeyExists from exc
                raise

    def _copy_upsert(self, conn: Connection, table: Table, names: list[str],
                     frame: Frame, data: bytes | None) -> Way:
        """COPY into a staging table, then one INSERT … SELECT … ON CONFLICT. `data` is
        the frame as binary COPY, or None for a text COPY."""
        cols = self._columns([self.key, *names])
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
        return Way.TEXT_COPY_UPSERT if data is None else Way.COPY_UPSERT

    def _copy_into(self, table: Table, cols: str) -> str:
        # made once per table and column list: quoting them anew costs at every frame
        statement = self._statements.get((table.schema, table.name, cols))
        if statement is None:
            target = self.engine.dialect.identifier_preparer.format_table(table)
            statement = f"COPY {target} ({cols}) FROM STDIN (FORMAT BINARY)"
            self._statements[(table.schema, table.name, cols)] = statement
        return statement


def for_engine(engine: Engine, key: str) -> WriteStrategy:
    """The strategy for the engine's database: COPY where the driver has it."""
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        return PostgresCopy(engine, key)
    return RowsUpsert(engine, key)


class _Conflicts:
    """After a plain COPY met a key already there, the next frames (`after`) are
    upserted without trying. Frames are written from the event loop and from threads
    at once: the count is kept under a lock."""

    def __init__(self, after: int) -> None:
        self.after = after
        self._left = 0
        self._lock = threading.Lock()

    def met(self) -> None:
        with self._lock:
            self._left = self.after

    def skip(self) -> bool:
        """Whether this frame is upserted without trying (one fewer left if so)."""
        with self._lock:
            if not self._left:
                return False
            self._left -= 1
            return True


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
