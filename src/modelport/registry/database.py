"""The registry's database connection: engines, schema migrations, error translation.

SQLite (a file, the default) and PostgreSQL are both first-class:

- SQLite runs in WAL mode (readers never wait for the writer) and every write
  transaction starts with `BEGIN IMMEDIATE`, so concurrent writers queue on the
  database lock (up to `SQLITE_BUSY_TIMEOUT_S`) instead of failing half-way with
  "database is locked" when they try to upgrade a read lock.
- PostgreSQL write transactions lock the model's row (`SELECT … FOR UPDATE`, see
  `Store`), and migrations run under a transaction-scoped advisory lock.

`sql_errors` is the one place where SQLAlchemy's and Alembic's exceptions become
modelport errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from modelport.errors import ConfigError, Conflict, ModelportError, NotReady

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "mp_alembic_version"
SQLITE_BUSY_TIMEOUT_S = 60.0
# Arbitrary, fixed key: every modelport process agrees on it, nothing else uses it.
PG_MIGRATION_LOCK = 7305114
WRITE = "modelport_write"
"""Execution option marking a connection whose transaction will write."""


def parse_url(url: str) -> URL:
    """Parse a registry URL; `postgresql://` and `postgres://` mean psycopg 3."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ConfigError(f"registry URL {url!r} is not a database URL: {exc}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        # SQLAlchemy's bare `postgresql` means psycopg2; modelport ships psycopg 3
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def display(url: URL) -> str:
    """The URL as it may appear in messages and logs: never with its password."""
    return url.render_as_string(hide_password=True)


def make_engine(url: str, *, json_serializer: Callable[[Any], str] | None = None) -> Engine:
    """An engine for modelport's own tables; `json_serializer` writes their JSON
    columns (default: the standard library's `json.dumps`)."""
    parsed = parse_url(url)
    options: dict[str, Any] = {"json_serializer": json_serializer} if json_serializer else {}
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed, **options)
        return create_engine(parsed, pool_pre_ping=True, **options)
    except (ImportError, sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
        hint = " (pip install 'modelport[postgres]')" if "postgres" in parsed.drivername else ""
        raise ConfigError(f"registry URL {display(parsed)!r} is not usable{hint}: {exc}") from exc


def _sqlite_engine(url: URL, **options: Any) -> Engine:
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


@contextlib.contextmanager
def sql_errors(where: str) -> Iterator[None]:
    """Translate SQLAlchemy/Alembic errors raised inside into modelport errors.

    `where` names the database in messages (a URL without its password).
    """
    try:
        yield
    except ModelportError:
        raise
    except sa_exc.IntegrityError as exc:
        raise Conflict(f"registry update conflicts with another writer: {_first_line(exc)}") \
            from exc
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
        # unreachable server, lost connection, pool exhausted, SQLite busy past the timeout
        raise NotReady(f"registry database {where} is unavailable: {_first_line(exc)}") from exc
    except sa_exc.SQLAlchemyError as exc:
        raise ModelportError(f"registry database {where} failed: {_first_line(exc)}") from exc
    except CommandError as exc:
        raise ConfigError(f"registry schema of {where}: {exc}") from exc


def _first_line(exc: sa_exc.SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


def migrate(engine: Engine, where: str) -> None:
    """Bring the schema to the latest revision; safe when many processes start at once.

    The common case, a registry already up to date, is one read and takes no lock (so a
    read-only database or role can still open it). Otherwise the check is repeated and
    the upgrade run in one write transaction: on SQLite `BEGIN IMMEDIATE` serialises
    it, on PostgreSQL an advisory lock does; DDL is transactional on both, so a crash
    leaves the previous revision intact.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(config)
    with sql_errors(where):
        with engine.connect() as conn:
            if _up_to_date(conn, script, where):
                return
        with engine.connect() as conn:
            conn.execution_options(**{WRITE: True})
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                 {"key": PG_MIGRATION_LOCK})
                if _up_to_date(conn, script, where):
                    return  # another process upgraded it while we waited for the lock
                config.attributes["connection"] = conn
                command.upgrade(config, "head")


def _up_to_date(conn: Connection, script: ScriptDirectory, where: str) -> bool:
    current = MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE}).get_current_heads()
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = [rev for rev in current if rev not in known]
    if unknown:
        raise ConfigError(
            f"registry database {where} has schema revision {', '.join(unknown)}, newer "
            f"than this modelport knows (latest {script.get_current_head()}): upgrade "
            "modelport to use it"
        )
    return set(current) == set(script.get_heads())


def schema_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
