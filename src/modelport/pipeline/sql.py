"""SQL tables and queries as pipeline components (SQLAlchemy).

PostgreSQL (`postgresql://`, psycopg 3: the `postgres` extra), MariaDB/MySQL
(`mysql://` or `mariadb://`, PyMySQL: the `mysql` extra) and SQLite (`sqlite:///file`).

- `SqlRetriever` looks many keys up in one statement (`key = ANY(:keys)` on
  PostgreSQL, an `IN (...)` list elsewhere, split past `IN_CHUNK` keys). On
  PostgreSQL a lookup of `COPY_MIN_ROWS` keys or more in a table of numbers comes
  back as binary COPY, cut into columns by numpy (`pgcopy`), not as a tuple per row.
- `SqlWriter` (`sqlwrite.py`) upserts on the key (`ON CONFLICT … DO UPDATE`, MariaDB's
  `ON DUPLICATE KEY UPDATE`), one transaction per frame, so a retried chunk leaves
  one row per key.

The drivers block, so database calls run in a worker thread; the engine's pool
replaces connections a restart or an outage broke (`sqlconn.make_engine`). One exception:
a lookup of a few keys (`INLINE_KEYS`) by an indexed key in an SQLite table in WAL mode
runs on the event loop. It reads a few pages of a local file, which takes microseconds
and, in WAL mode, never waits for a writer, while handing it to a thread and back
costs far more CPU than that, and a turn of the GIL. Engines and error translation
live in `sqlconn.py`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import Column, Table, any_, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql import Executable
from sqlalchemy.types import TypeEngine

from modelport.errors import ConfigError
from modelport.pipeline import pgcopy
from modelport.pipeline.base import Frame, Key, Retriever
from modelport.pipeline.columns import KeyMatch, column, plain_keys
from modelport.pipeline.sqlconn import SqlComponent, driver_errors
from modelport.pipeline.sqlwrite import COPY_MIN_ROWS, SqlWriter

IN_CHUNK = 10_000
"""Keys per `IN (...)` list: well under SQLite's 32,766 and PostgreSQL's 65,535 bound
parameters per statement, and a statement size MariaDB takes with default settings."""
ANY_CHUNK = 100_000
"""Keys per PostgreSQL array parameter (one parameter; bounded only for memory)."""
INLINE_KEYS = 16
"""SQLite lookups of at most this many keys by an indexed key run on the event loop."""
_KEYS_PARAM = re.compile(r"(?<![:\w]):keys\b")

__all__ = ["ANY_CHUNK", "COPY_MIN_ROWS", "INLINE_KEYS", "IN_CHUNK", "SqlRetriever",
           "SqlWriter"]


class SqlRetriever(SqlComponent, Retriever):
    """Rows of `table` by its `key` column, or of a `query`.

    `query` either has an expanding `:keys` parameter (`... WHERE user_id IN :keys`), or
    has none: then `get` filters it as a subquery on `key`. `columns` picks a table's
    columns (default: all); the key column becomes the frame's keys, not a column.
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
        self._statement: tuple[Executable, int] | None = None
        self._oids: list[int] | None = None
        self._inline = False  # decided at start: small lookups on the event loop
        self._raw_sql: dict[int, str] | None = None  # their SELECTs, by number of keys

    async def start(self) -> None:
        await super().start()
        if self.table is not None:
            with self.errors():
                await asyncio.to_thread(self._reflect)
                self._inline = await asyncio.to_thread(self._local_index)
                plain = self._inline and self.engine.dialect.paramstyle == "qmark" \
                    and self._plain_types()
                self._raw_sql = {} if plain else None

    def _local_index(self) -> bool:
        """True when a lookup is a read of a local SQLite file by an index that never
        waits for a writer (WAL mode): cheaper on the event loop than in a thread. An
        unindexed key (a scan), an in-memory database (one connection shared with the
        writers) or a rollback journal (readers wait for writers) keep the thread."""
        if self.engine.dialect.name != "sqlite":
            return False
        table = self._reflect()
        key = table.c[self.key]
        # the key leads the primary key or an index: a lookup is a B-tree search
        leads = [next(iter(table.primary_key.columns), None),
                 *(next(iter(index.columns), None) for index in table.indexes)]
        indexed = any(column is key for column in leads)
        with self.engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        return bool(indexed) and str(mode).lower() == "wal"

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
            if self._inline and len(keys) <= INLINE_KEYS:
                return self._get_inline(list(keys))
            return await asyncio.to_thread(self._get, list(keys))

    def _get_inline(self, keys: list[Key]) -> Frame:
        """A lookup on the event loop: when the columns need no type conversion, the
        SELECT goes straight to the driver's cursor as text compiled once per number of
        keys, skipping SQLAlchemy's execution (most of a one-key lookup's cost)."""
        if self._raw_sql is None:
            return self._get(keys)
        values = _coerce(plain_keys(keys), self._reflect().c[self.key].type)
        if not values:
            return Frame([], {})
        sql = self._raw_sql.get(len(values))
        if sql is None:
            sql = self._raw_sql[len(values)] = self._raw_select(len(values))
        with self.engine.connect() as conn:
            raw: Any = conn.connection.driver_connection
            with driver_errors(conn, raw):
                cursor = raw.execute(sql, values)
                names = [d[0] for d in cursor.description]
                rows = cursor.fetchall()
        return self._frame(names, rows, KeyMatch(keys))

    def _raw_select(self, n: int) -> str:
        table = self._reflect()
        prep = self.engine.dialect.identifier_preparer
        names = ", ".join(prep.quote(c.name) for c in [table.c[self.key],
                                                      *self._columns(table)])
        return (f"SELECT {names} FROM {prep.format_table(table)} "
                f"WHERE {prep.quote(self.key)} IN ({', '.join('?' * n)})")

    def _plain_types(self) -> bool:
        """True when no selected column (nor the key) is converted by SQLAlchemy on its
        way in or out (a date read back from text, a boolean from an integer): then the
        driver's own values are the answer."""
        table = self._reflect()
        dialect = self.engine.dialect
        key_type = table.c[self.key].type.dialect_impl(dialect)
        if key_type.bind_processor(dialect) is not None:
            return False
        return all(c.type.dialect_impl(dialect).result_processor(dialect, None) is None
                   for c in [table.c[self.key], *self._columns(table)])

    def _get(self, keys: list[Key]) -> Frame:
        if self.table is not None and len(keys) >= COPY_MIN_ROWS \
                and self.engine.dialect.name == "postgresql":
            frame = self._copy_get(keys)
            if frame is not None:
                return frame
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
        if self._statement is None:
            # built once: constructing the select costs more than running it on an
            # indexed table, on every request
            self._statement = self._lookup_statement()
        statement, size = self._statement
        if self.query is not None:
            return statement, plain_keys(keys), size
        return statement, _coerce(plain_keys(keys), self._reflect().c[self.key].type), size

    def _lookup_statement(self) -> tuple[Executable, int]:
        if self.query is not None:
            if _KEYS_PARAM.search(self.query):
                statement = text(self.query)
            else:
                quoted = self.engine.dialect.identifier_preparer.quote(self.key)
                statement = text(f"SELECT * FROM ({self.query.strip().rstrip(';')}) "
                                 f"AS mp_rows WHERE mp_rows.{quoted} IN :keys")
            return statement.bindparams(bindparam("keys", expanding=True)), IN_CHUNK
        table = self._reflect()
        key = table.c[self.key]
        chosen = [key, *self._columns(table)]
        if self.engine.dialect.name == "postgresql":
            # one array parameter: one statement shape whatever the number of keys
            condition = key == any_(bindparam("keys", type_=ARRAY(key.type)))
            return select(*chosen).where(condition), ANY_CHUNK
        return select(*chosen).where(key.in_(bindparam("keys", expanding=True))), IN_CHUNK

    def _copy_get(self, keys: list[Key]) -> Frame | None:
        """The rows of many keys as binary COPY; None when a column is not a number."""
        table = self._reflect()
        values = _coerce(plain_keys(keys), table.c[self.key].type)
        if not values:
            return Frame([], {})
        prep = self.engine.dialect.identifier_preparer
        names = [self.key, *(c.name for c in self._columns(table))]
        query = f"SELECT {', '.join(map(prep.quote, names))} FROM {prep.format_table(table)}"
        with self.engine.connect() as conn:
            raw: Any = conn.connection.driver_connection  # psycopg's own, which has COPY
            with driver_errors(conn, raw), raw.cursor() as cursor:
                if self._oids is None:
                    self._oids = [oid for _, oid in pgcopy.describe(cursor, query)]
                if not pgcopy.readable(self._oids):
                    return None
                parts = [part for i in range(0, len(values), ANY_CHUNK)
                         for part in pgcopy.copy_out(
                             cursor, f"{query} WHERE {prep.quote(self.key)} = ANY("
                             f"{_array_literal(values[i:i + ANY_CHUNK], raw)})",
                             self._oids, len(values))]
        if not parts:
            return Frame([], {})
        arrays = [np.concatenate(c) if len(parts) > 1 else c[0] for c in zip(*parts, strict=True)]
        frame = Frame(arrays[0].tolist(), dict(zip(names[1:], arrays[1:], strict=True)))
        if arrays[0].dtype.kind == "i" and all(type(k) is int for k in keys):
            return frame  # the keys asked for, as asked: no matching needed
        match = KeyMatch(keys)  # an HTTP caller's "1001" for 1001
        frame.keys = [match(k) for k in frame.keys]
        if None in frame.keys:  # rows for keys nobody asked for
            frame = frame.take([i for i, k in enumerate(frame.keys) if k is not None])
        return frame

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


def _array_literal(values: list[Any], raw: Any) -> str:
    """An array of keys as SQL text, as COPY takes no parameters. Integers are written
    out directly (far faster than quoting each); anything else is quoted by psycopg."""
    if all(type(v) is int for v in values):
        return "'{" + ",".join(map(str, values)) + "}'"
    from psycopg import sql

    return str(sql.Literal(values).as_string(raw))
