"""Connections of SQL components: engines, their lifecycle, and error translation.

`SqlComponent.errors` is the one place SQLAlchemy's exceptions become modelport errors:
an outage (server down, connection lost, pool exhausted, SQLite locked) is a
`NotReady` (503) naming the database by its URL without the password; anything else
(a wrong query, table or value) is a 500 with the database's own first line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from modelport.errors import ConfigError, ModelportError
from modelport.pipeline.base import Component
from modelport.pipeline.retry import redact, unavailable
from modelport.registry.database import display

CONNECT_TIMEOUT_S = 5
PING_IDLE_S = 1.0
"""A pooled connection idle this long is checked before it is used again."""
POOL_SIZE = min(32, (os.cpu_count() or 1) + 4)
"""Connections an engine keeps: as many as asyncio's default executor has threads,
where components run their queries (`asyncio.to_thread`). With fewer, queries at once
beyond the pool each opened and closed a connection of their own."""
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
            "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}


def make_engine(url: str) -> Engine:
    """A pooled engine; bare `postgresql://` and `mysql://` mean the drivers we ship."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ConfigError(f"{redact(url)!r} is not a database URL: {exc}") from None
    parsed = parsed.set(drivername=_DRIVERS.get(parsed.drivername, parsed.drivername))
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        # a host that drops packets would otherwise hold a request for minutes
        connect_args = {} if "connect_timeout" in parsed.query \
            else {"connect_timeout": CONNECT_TIMEOUT_S}
        return _ping_when_idle(create_engine(parsed, connect_args=connect_args,
                                             pool_size=POOL_SIZE))
    except (ImportError, sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
        extra = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}.get(
            parsed.get_backend_name(), "all")
        raise ConfigError(f"database URL {display(parsed)!r} is not usable (pip install "
                          f"'modelport[{extra}]'): {exc}") from exc


def _ping_when_idle(engine: Engine) -> Engine:
    """Check a pooled connection with a round trip before use, when it has been idle
    `PING_IDLE_S` or more: one that went stale (a restarted server, a firewall's
    timeout) is replaced unseen. SQLAlchemy's `pool_pre_ping` checks at every use,
    which costs a stream's writes and a service's lookups a round trip each; a
    connection in steady use that breaks fails its query, and the pool then replaces
    all its connections (the component's caller sees an outage and retries)."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _idle(_: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: Any, record: Any, __: Any) -> None:
        since = record.info.get("idle_since")
        if since is not None and time.monotonic() - since >= PING_IDLE_S:
            try:
                dialect.do_ping(dbapi_conn)
            except dialect.loaded_dbapi.Error as exc:
                raise sa_exc.DisconnectionError(str(exc)) from exc  # the pool reconnects

    return engine


def _sqlite_engine(url: URL) -> Engine:
    memory = url.database in (None, "", ":memory:")
    engine = create_engine(
        # worker threads take turns with a connection; sqlite3's own check would refuse
        url, connect_args={"timeout": 30.0, "check_same_thread": False},
        # an in-memory database lives in its one connection: share it. A file keeps a
        # connection for every thread that may query it at once (asyncio's default
        # executor): past the pool's size each use opened and closed a connection, and
        # its WAL pragma, and under concurrent requests that was most uses
        **({"poolclass": StaticPool} if memory else {"pool_size": POOL_SIZE}),
    )
    if not memory:
        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for writes

    return engine


def _outage(exc: sa_exc.SQLAlchemyError) -> bool:
    """A server down, a connection lost, a full pool or a locked SQLite file: worth a
    503 and a retry later, unlike a wrong query, table or value."""
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.InterfaceError):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    # no statement: it failed while connecting
    return exc.connection_invalidated or exc.statement is None or (
        isinstance(exc, sa_exc.OperationalError) and "locked" in str(exc.orig))


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

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except ModelportError:
            raise
        except sa_exc.NoSuchTableError as exc:
            raise ConfigError(f"{self.where} has no table {exc}") from exc
        except sa_exc.SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None) or exc
            if _outage(exc):
                raise unavailable(self.where, orig) from exc
            raise ModelportError(f"{self.where}: {_first_line(orig)}") from exc

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


@contextlib.contextmanager
def driver_errors(conn: Connection, raw: Any) -> Iterator[None]:
    """Errors of the driver's own connection (`raw`, used for COPY), raised as
    SQLAlchemy would have raised them from `conn`, so `errors()` translates them."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        raise sa_exc.DBAPIError.instance(
            "COPY", None, exc, dbapi.Error, dialect=conn.dialect,
            connection_invalidated=conn.dialect.is_disconnect(exc, raw, None)) from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


