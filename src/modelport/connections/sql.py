"""SQL databases: making engines, and the one translation of SQLAlchemy's errors.

Two kinds of engine:

- `make_engine`, for the databases pipelines, batch jobs and applications read and
  write: pooled for asyncio's default executor, pinged when idle, bare
  `postgresql://` and `mysql://` meaning the drivers modelport ships.
- `make_store_engine`, for modelport's own tables (the registry, the prediction log).
  SQLite (a file, the default) runs in WAL mode (readers never wait for the writer),
  and a transaction marked `WRITE` starts with `BEGIN IMMEDIATE`, so concurrent
  writers queue on the database lock (up to `SQLITE_BUSY_TIMEOUT_S`) instead of
  failing half-way with "database is locked" when they try to upgrade a read lock.

`sql_error` is the one place SQLAlchemy's exceptions become modelport errors: an outage
(server down, connection lost, pool exhausted, SQLite locked, a deadlock or timeout the
server gave up on) is a `NotReady` (503) naming the database by its URL without the
password; anything else (a wrong query, table or value) is a 500 with the database's
own first line.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, DateTime, Dialect, Engine, TypeDecorator, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from modelport.connections import first_line, redact, unavailable
from modelport.errors import ConfigError, ModelportError

CONNECT_TIMEOUT_S = 5
PING_IDLE_S = 1.0
"""A pooled connection idle this long is checked before it is used again."""
POOL_SIZE = min(32, (os.cpu_count() or 1) + 4)
"""Connections an engine keeps: as many as asyncio's default executor has threads,
where components run their queries (`asyncio.to_thread`). With fewer, queries at once
beyond the pool each opened and closed a connection of their own."""
SQLITE_BUSY_TIMEOUT_S = 60.0
WRITE = "modelport_write"
"""Execution option marking a connection whose transaction will write."""
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
            "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}
# SQLSTATEs of a statement the server gave up on, not a wrong one: a transaction
# rolled back (deadlock, serialization), a lock not granted, a query cancelled (a
# statement timeout), too few resources, the server shutting down
_TRANSIENT_SQLSTATES = ("40", "53", "55P03", "57014", "57P")
# SQLite's codes for the state of the file, not the statement: locked, busy, read-only,
# unopenable, full, an I/O error
_TRANSIENT_SQLITE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_READONLY", "SQLITE_CANTOPEN",
                     "SQLITE_FULL", "SQLITE_IOERR")


def display(url: URL | str) -> str:
    """A database URL as it may appear in messages and logs: never with its password."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return redact(url)


def parse_url(url: str) -> URL:
    """Parse a database URL; bare `postgresql://` (also `postgres://`), `mysql://` and
    `mariadb://` mean the drivers modelport ships (psycopg 3, PyMySQL)."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ConfigError(f"{redact(url)!r} is not a database URL: {exc}") from None
    return parsed.set(drivername=_DRIVERS.get(parsed.drivername, parsed.drivername))


def make_engine(url: str) -> Engine:
    """A pooled engine for a database modelport reads or writes for an application."""
    parsed = parse_url(url)
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
        # executor): past the pool's size each use would open and close a connection,
        # and its WAL pragma
        **({"poolclass": StaticPool} if memory else {"pool_size": POOL_SIZE}),
    )
    if not memory:
        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for writes

    return engine


def make_store_engine(url: str, *,
                      json_serializer: Callable[[Any], str] | None = None,
                      json_deserializer: Callable[[Any], Any] | None = None) -> Engine:
    """An engine for modelport's own tables; `json_serializer` writes their JSON
    columns and `json_deserializer` reads them (default: the standard library's)."""
    parsed = parse_url(url)
    options: dict[str, Any] = {"json_serializer": json_serializer} if json_serializer else {}
    if json_deserializer:
        options["json_deserializer"] = json_deserializer
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_store_engine(parsed, **options)
        return create_engine(parsed, pool_pre_ping=True, **options)
    except (ImportError, sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
        hint = " (pip install 'modelport[postgres]')" if "postgres" in parsed.drivername else ""
        raise ConfigError(f"registry URL {display(parsed)!r} is not usable{hint}: {exc}") from exc


def _sqlite_store_engine(url: URL, **options: Any) -> Engine:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    memory = url.database in (None, "", ":memory:")
    engine = create_engine(
        # the pool hands a connection to one thread at a time, but not always the same
        # thread (servers call the registry from worker threads): sqlite3's own check
        # would refuse that
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        # an in-memory database lives in its connection: share one across threads
        **({"poolclass": StaticPool} if memory else {}),
        **options,
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _: Any) -> None:
        # the sqlite3 module's own transaction handling defers BEGIN and cannot do
        # BEGIN IMMEDIATE; switch it off and issue BEGIN ourselves (SQLAlchemy's recipe)
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA foreign_keys=ON")
        if not memory:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def outage(exc: sa_exc.SQLAlchemyError) -> bool:
    """A server down, a connection lost, a full pool, a locked or read-only SQLite file,
    a statement the server gave up on: worth a 503 and a retry later, unlike a wrong query, table
    or value."""
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.InterfaceError):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    # no statement: it failed while connecting
    if exc.connection_invalidated or exc.statement is None:
        return True
    if not isinstance(exc, sa_exc.OperationalError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    sqlite = getattr(exc.orig, "sqlite_errorname", None) or ""
    return ("locked" in str(exc.orig) or sqlstate.startswith(_TRANSIENT_SQLSTATES)
            or sqlite.startswith(_TRANSIENT_SQLITE))


def sql_error(where: str, exc: sa_exc.SQLAlchemyError) -> ModelportError:
    """The modelport error for a SQLAlchemy one; `where` names the database (or what
    was being done with it) in the message."""
    if isinstance(exc, sa_exc.NoSuchTableError):
        return ConfigError(f"{where} has no table {exc}")
    if outage(exc):
        return unavailable(where, exc)
    return ModelportError(f"{where} failed: {first_line(exc)}")


@contextlib.contextmanager
def sql_errors(where: str) -> Iterator[None]:
    """Raise SQLAlchemy's errors inside as modelport errors (`sql_error`)."""
    try:
        yield
    except ModelportError:
        raise
    except sa_exc.SQLAlchemyError as exc:
        raise sql_error(where, exc) from exc


@contextlib.contextmanager
def driver_errors(conn: Connection, raw: Any) -> Iterator[None]:
    """Errors of the driver's own connection (`raw`, used for COPY), raised as
    SQLAlchemy would have raised them from `conn`, so `sql_errors` translates them."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        raise sa_exc.DBAPIError.instance(
            "COPY", None, exc, dbapi.Error, dialect=conn.dialect,
            connection_invalidated=conn.dialect.is_disconnect(exc, raw, None)) from exc


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in and comes out as an aware UTC datetime.

    SQLite has no time zones: SQLAlchemy stores the wall-clock fields and hands back a
    naive datetime, so an aware non-UTC value would silently shift. Normalising to UTC
    on the way in and tagging on the way out gives one behaviour on every database.
    The column type is unchanged (DateTime(timezone=True)), so no migration is needed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("registry timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # a string only from SQLite rows written by another tool
        when: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
