"""The registry's database: schema migrations, and its errors.

SQLite (a file, the default) and PostgreSQL are both first-class. The engine comes
from `modelport.connections.sql.make_store_engine` (SQLite in WAL mode, writes that
start with `BEGIN IMMEDIATE`); PostgreSQL write transactions lock the model's row
(`SELECT … FOR UPDATE`, see `Store`), and migrations run under a transaction-scoped
advisory lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text
from sqlalchemy import exc as sa_exc

from modelport.connections import first_line
from modelport.connections.sql import WRITE
from modelport.connections.sql import sql_errors as translated
from modelport.errors import ConfigError, Conflict

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "mp_alembic_version"
# Arbitrary, fixed key: every modelport process agrees on it, nothing else uses it.
PG_MIGRATION_LOCK = 7305114


@contextlib.contextmanager
def sql_errors(where: str) -> Iterator[None]:
    """Translate SQLAlchemy/Alembic errors raised inside into modelport errors: a
    constraint another writer got to first is a `Conflict`, the rest as everywhere
    (`modelport.connections.sql.sql_error`).

    `where` names the database in messages (a URL without its password).
    """
    try:
        with translated(f"registry database {where}"):
            try:
                yield
            except sa_exc.IntegrityError as exc:
                raise Conflict("registry update conflicts with another writer: "
                               f"{first_line(exc)}") from exc
    except CommandError as exc:
        raise ConfigError(f"registry schema of {where}: {exc}") from exc


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
