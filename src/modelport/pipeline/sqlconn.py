"""SQL components: the engine's lifecycle and error translation, shared by the SQL
reader and writer. Engines and the translation of SQLAlchemy's errors are
`modelport.connections.sql`'s.
"""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy import Engine, MetaData, Table, text

from modelport.connections.sql import (
    CONNECT_TIMEOUT_S,
    POOL_SIZE,
    display,
    driver_errors,
    make_engine,
    sql_errors,
)
from modelport.pipeline.base import Component

__all__ = ["CONNECT_TIMEOUT_S", "POOL_SIZE", "SqlComponent", "driver_errors", "make_engine"]


class SqlComponent(Component):
    """The engine's lifecycle and the error translation shared by reader and writer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    @property
    def where(self) -> str:
        return f"SQL database {display(self.engine.url)}"

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return sql_errors(self.where)

    async def start(self) -> None:
        self.engine  # noqa: B018 - builds the engine: a bad URL fails at start-up
        await self.check()

    async def close(self) -> None:
        if self._engine is not None:
            await asyncio.to_thread(self._engine.dispose)
            self._engine = None

    async def check(self) -> None:
        def ping() -> None:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        with self.errors():
            await asyncio.to_thread(ping)

    def _load_table(self, table: str) -> Table:
        schema, _, name = table.rpartition(".")
        with self.engine.connect() as conn:
            return Table(name, MetaData(), schema=schema or None, autoload_with=conn)
