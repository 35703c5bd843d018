"""The SQL writer: results upserted on their key, one transaction per frame.

The writer keeps the table (creating it, adding the columns later frames bring) and
hands each frame to the strategy its database takes (`sqlstrategies`: COPY on
PostgreSQL, `executemany` elsewhere), chosen once when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import TypeEngine

from modelport.errors import ConfigError
from modelport.pipeline.base import Frame, Writer
from modelport.pipeline.columns import column, dedupe_last, plain_keys
from modelport.pipeline.sqlconn import SqlComponent
from modelport.pipeline.sqlstrategies import COPY_MIN_ROWS, WriteStrategy, for_engine

__all__ = ["COPY_MIN_ROWS", "SqlWriter"]


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
        self._strategy: WriteStrategy | None = None
        self._creating = threading.Lock()

    @property
    def strategy(self) -> WriteStrategy:
        """How frames go into the table on this database: chosen once, at `start`
        (or at the first write of a writer used without starting it)."""
        if self._strategy is None:
            self._strategy = for_engine(self.engine, self.key)
            self.max_concurrent_writes = self._strategy.concurrency
        return self._strategy

    async def start(self) -> None:
        await super().start()
        self.strategy  # noqa: B018 - chosen from the database's dialect, once
        with self.errors():
            await asyncio.to_thread(self._existing)

    async def close(self) -> None:
        if self._strategy is not None:
            await self._strategy.close()
            self._strategy = None
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
            table = self._table
            if table is None or any(n not in table.c for n in names):
                table = await asyncio.to_thread(self._prepare, frame, names)
            await self.strategy.write(table, frame, names)

    def _prepare(self, frame: Frame, names: list[str]) -> Table:
        """The table, with a column for each of `names`: created, or columns added,
        if the writer may (`create`)."""
        # the first frames may be written side by side (threads): one looks the table
        # up and creates it, the others wait and take it (each reflecting it on its
        # own, on a table not there yet, kept a job's first writes from starting)
        with self._creating:
            table = self._existing()
            if table is None:
                table = self._create_table(frame, names)
            missing = [n for n in names if n not in table.c]
            if missing and self.create:
                table = self._add_columns(table, frame, missing)
        if missing and not self.create:
            raise ConfigError(f"{self.where}: table {self.table!r} has no column(s) "
                              f"{', '.join(missing)}; add them, or list the ones to store "
                              "in the writer's 'columns', or let the writer add them "
                              "('create: true')")
        return table

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
            # no check first: the table was not there a moment ago (`_existing`)
            table.create(self.engine, checkfirst=False)
        except sa_exc.DBAPIError:
            # another process may create it between our look and our CREATE: SQLite
            # says so with an OperationalError, PostgreSQL with a ProgrammingError or
            # IntegrityError; then the table is theirs, as it is: read it back
            with contextlib.suppress(sa_exc.NoSuchTableError):
                self._table = self._load_table(self.table)
                return self._table
            raise
        # the table made is the one just described: reading it back from the catalog
        # costs a job's first write more than the CREATE does
        self._table = table
        return self._table

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


def _sql_type(values: Any, dialect: str) -> TypeEngine[Any]:
    arr = values if hasattr(values, "dtype") else column(list(values))
    kinds: dict[str, TypeEngine[Any]] = {
        "b": Boolean(), "i": BigInteger(), "u": BigInteger(), "f": Double()}
    if arr.ndim == 1:
        return kinds.get(arr.dtype.kind, Text())
    if dialect == "postgresql" and arr.ndim == 2 and arr.dtype.kind in "iuf":
        return ARRAY(kinds[arr.dtype.kind])
    return Text()

