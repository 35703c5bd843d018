"""The registry's metadata in SQL: versions, aliases and their audit trail.

SQLite (the default) and PostgreSQL through one SQLAlchemy engine. Concurrency:
version numbers come from `max(version) + 1` under a unique constraint, retried on
conflict, so two processes registering one name get distinct versions. SQLite write
transactions start with `BEGIN IMMEDIATE` so writers queue instead of failing.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from pydantic import BaseModel
from sqlalchemy import Connection, Engine, create_engine, delete, event, func, insert, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy import update as sa_update

from modelport.errors import (
    AliasNotFound,
    Conflict,
    ConfigError,
    ModelNotFound,
    ModelportError,
    VersionNotFound,
)
from modelport.registry.tables import alias_events, aliases, models, versions
from modelport.signature import Signature

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations"


class ModelVersion(BaseModel):
    """One registered version of a model, as the registry records it."""

    name: str
    version: int
    flavor: str
    options: dict[str, Any]
    signature: Signature
    metrics: dict[str, Any]
    params: dict[str, Any]
    tags: dict[str, Any]
    profile: dict[str, Any]
    sha256: str
    size: int
    created_at: datetime
    created_by: str | None = None
    aliases: list[str] = []

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class AliasEvent(BaseModel):
    name: str
    alias: str
    kind: str
    from_version: int | None
    to_version: int | None
    at: datetime
    actor: str | None
    reason: str | None


def now() -> datetime:
    return datetime.now(UTC)


class Store:
    """SQL operations of the registry; every method is one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except ModelportError:
            raise
        except sa_exc.OperationalError as exc:
            raise ModelportError(f"registry database unavailable ({self.url}): {exc.orig}",
                                 status_code=503) from exc

    def _retry(self, fn: Callable[[], T], attempts: int = 20) -> T:
        for attempt in range(attempts):
            try:
                return fn()
            except sa_exc.IntegrityError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    # --- versions -------------------------------------------------------------------

    def add_version(self, name: str, fields: dict[str, Any], description: str | None) -> int:
        def attempt() -> int:
            with self._tx() as conn:
                if conn.execute(select(models.c.name).where(models.c.name == name)).first() is None:
                    conn.execute(insert(models).values(
                        name=name, description=description, created_at=now()))
                latest = conn.execute(
                    select(func.max(versions.c.version)).where(versions.c.name == name)
                ).scalar()
                number = (latest or 0) + 1
                conn.execute(insert(versions).values(
                    name=name, version=number, created_at=now(), **fields))
                return number

        return self._retry(attempt)

    def get_version(self, name: str, version: int) -> ModelVersion:
        with self._tx() as conn:
            row = conn.execute(
                select(versions).where(versions.c.name == name, versions.c.version == version)
            ).mappings().first()
            if row is None:
                self._require_model(conn, name)
                raise VersionNotFound(f"model {name!r} has no version {version}")
            return self._version(conn, row)

    def latest_version(self, name: str) -> int:
        with self._tx() as conn:
            self._require_model(conn, name)
            number = conn.execute(
                select(func.max(versions.c.version)).where(versions.c.name == name)
            ).scalar()
        if number is None:
            raise VersionNotFound(f"model {name!r} has no versions")
        return int(number)

    def list_versions(self, name: str) -> list[ModelVersion]:
        with self._tx() as conn:
            self._require_model(conn, name)
            rows = conn.execute(
                select(versions).where(versions.c.name == name).order_by(versions.c.version)
            ).mappings().all()
            return [self._version(conn, r) for r in rows]

    def list_models(self) -> list[dict[str, Any]]:
        with self._tx() as conn:
            rows = conn.execute(
                select(models.c.name, models.c.description, func.max(versions.c.version),
                       func.count(versions.c.id))
                .select_from(models.outerjoin(versions, versions.c.name == models.c.name))
                .group_by(models.c.name, models.c.description).order_by(models.c.name)
            ).all()
            alias_rows = conn.execute(select(aliases)).mappings().all()
        by_name: dict[str, dict[str, int]] = {}
        for a in alias_rows:
            by_name.setdefault(a["name"], {})[a["alias"]] = a["version"]
        return [
            {"name": n, "description": d, "latest_version": latest, "versions": count,
             "aliases": by_name.get(n, {})}
            for n, d, latest, count in rows
        ]

    def delete_version(self, name: str, version: int) -> str:
        """Delete a version's record; returns its sha256 if no other version uses it."""
        with self._tx() as conn:
            pointing = conn.execute(
                select(aliases.c.alias).where(aliases.c.name == name, aliases.c.version == version)
            ).scalars().all()
            if pointing:
                raise Conflict(
                    f"{name}:{version} is in use by alias {', '.join(sorted(pointing))}; "
                    "move or remove the alias first"
                )
            sha = conn.execute(
                select(versions.c.sha256).where(versions.c.name == name,
                                                versions.c.version == version)
            ).scalar()
            if sha is None:
                self._require_model(conn, name)
                raise VersionNotFound(f"model {name!r} has no version {version}")
            conn.execute(delete(versions).where(versions.c.name == name,
                                                versions.c.version == version))
            shared = conn.execute(select(func.count()).where(versions.c.sha256 == sha)).scalar()
        return "" if shared else str(sha)

    # --- aliases --------------------------------------------------------------------

    def get_alias(self, name: str, alias: str) -> int:
        with self._tx() as conn:
            number = conn.execute(
                select(aliases.c.version).where(aliases.c.name == name, aliases.c.alias == alias)
            ).scalar()
            if number is None:
                self._require_model(conn, name)
                raise AliasNotFound(f"model {name!r} has no alias {alias!r}")
        return int(number)

    def set_alias(self, name: str, alias: str, version: int | None, *, kind: str = "set",
                  actor: str | None = None, reason: str | None = None) -> int | None:
        """Point `alias` at `version` (None removes it); record the move; return the old."""

        def attempt() -> int | None:
            with self._tx() as conn:
                self._require_model(conn, name)
                if version is not None:
                    exists = conn.execute(select(versions.c.id).where(
                        versions.c.name == name, versions.c.version == version)).first()
                    if exists is None:
                        raise VersionNotFound(f"model {name!r} has no version {version}")
                where = (aliases.c.name == name, aliases.c.alias == alias)
                old = conn.execute(select(aliases.c.version).where(*where)).scalar()
                if version is None:
                    if old is None:
                        raise AliasNotFound(f"model {name!r} has no alias {alias!r}")
                    conn.execute(delete(aliases).where(*where))
                elif old is None:
                    conn.execute(insert(aliases).values(
                        name=name, alias=alias, version=version, updated_at=now()))
                else:
                    conn.execute(sa_update(aliases).where(*where).values(
                        version=version, updated_at=now()))
                conn.execute(insert(alias_events).values(
                    name=name, alias=alias, kind=kind, from_version=old, to_version=version,
                    at=now(), actor=actor, reason=reason))
                return None if old is None else int(old)

        return self._retry(attempt)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        with self._tx() as conn:
            self._require_model(conn, name)
            query = select(alias_events).where(alias_events.c.name == name)
            if alias is not None:
                query = query.where(alias_events.c.alias == alias)
            rows = conn.execute(query.order_by(alias_events.c.id)).mappings().all()
        return [AliasEvent.model_validate(dict(r)) for r in rows]

    def alias_map(self) -> dict[tuple[str, str], int]:
        """Every alias at once: what a server polls to follow promotions."""
        with self._tx() as conn:
            rows = conn.execute(select(aliases.c.name, aliases.c.alias, aliases.c.version)).all()
        return {(n, a): int(v) for n, a, v in rows}

    # --- helpers --------------------------------------------------------------------

    def _require_model(self, conn: Connection, name: str) -> None:
        if conn.execute(select(models.c.name).where(models.c.name == name)).first() is None:
            raise ModelNotFound(f"no model named {name!r}")

    def _version(self, conn: Connection, row: Any) -> ModelVersion:
        names = conn.execute(select(aliases.c.alias).where(
            aliases.c.name == row["name"], aliases.c.version == row["version"])).scalars().all()
        data = {k: v for k, v in dict(row).items() if k != "id"}
        return ModelVersion.model_validate({**data, "aliases": sorted(names)})


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None  # let us issue BEGIN ourselves
            dbapi_conn.execute("PRAGMA foreign_keys=ON")
            dbapi_conn.execute("PRAGMA journal_mode=WAL")

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        return create_engine(url, pool_pre_ping=True)
    except (ImportError, sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
        raise ConfigError(f"registry URL {url!r} is not usable: {exc}") from exc


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest revision, one process at a time."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with _migration_lock(engine) as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    try:
        conn = engine.connect()
    except sa_exc.OperationalError as exc:
        raise ModelportError(f"cannot reach the registry database: {exc.orig}",
                             status_code=503) from exc
    with conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(7305114)"))
            conn.commit()
            try:
                yield conn
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(7305114)"))
                conn.commit()
        elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            with open(f"{engine.url.database}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield conn
        else:
            yield conn
