"""The registry's metadata in SQL: versions, aliases and their audit trail.

Every public method is one transaction. Concurrency rules:

- Writes that depend on what is already there (the next version number, an alias's
  previous version, whether an alias still points at a version being deleted) first
  lock the model's row: `SELECT … FOR UPDATE` on PostgreSQL, the database write lock
  taken by `BEGIN IMMEDIATE` on SQLite. Writers to one model therefore run one at a
  time, and the audit trail's `from_version` is always the version really replaced.
- The first writer of a new model inserts its row; a concurrent first writer gets a
  unique-key violation and the whole transaction is retried, then finds the row.
- Version numbers come from a counter on the model's row, so they are never reused,
  not even the number of a deleted newest version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Connection, delete, func, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy import update as sa_update

from modelport.connections.sql import WRITE, display, make_store_engine
from modelport.errors import AliasNotFound, Conflict, ModelNotFound, VersionNotFound
from modelport.model import ModelVersion
from modelport.registry.database import migrate, sql_errors
from modelport.registry.tables import alias_events, aliases, models, versions

T = TypeVar("T")
ATTEMPTS = 20


class AliasEvent(BaseModel):
    """One move of an alias: the audit trail, and what rollback replays."""

    name: str
    alias: str
    kind: str
    """`set`, `rollback` or `remove` (moves), or a decision that moved nothing: `refuse`
    (a gate kept a candidate out) or `hold` (a guard's window passed without a breach)."""
    from_version: int | None
    to_version: int | None
    at: datetime
    actor: str | None
    reason: str | None


def now() -> datetime:
    return datetime.now(UTC)


class Store:
    """SQL operations of the registry; migrates the schema when opened."""

    def __init__(self, url: str) -> None:
        self.engine = make_store_engine(url)
        self.url = display(self.engine.url)
        try:
            migrate(self.engine, self.url)
        except BaseException:
            self.engine.dispose()  # a refused registry must not leak pooled connections
            raise

    def close(self) -> None:
        self.engine.dispose()

    def _run(self, fn: Callable[[Connection], T], *, write: bool = False) -> T:
        """Run `fn` in one transaction; a write that lost a unique-key race is retried."""
        with sql_errors(self.url):
            for attempt in range(ATTEMPTS):
                try:
                    with self.engine.connect() as conn:
                        if write:
                            conn.execution_options(**{WRITE: True})
                        with conn.begin():
                            return fn(conn)
                except sa_exc.IntegrityError:
                    if not write or attempt == ATTEMPTS - 1:
                        raise
                    time.sleep(0.002 * (attempt + 1))
        raise AssertionError("unreachable")

    # --- versions -------------------------------------------------------------------

    def add_version(self, name: str, fields: dict[str, Any], description: str | None) -> int:
        """Record the next version of `name` (created on first use); return its number."""

        def run(conn: Connection) -> int:
            if conn.execute(select(models.c.name).where(models.c.name == name)).first() is None:
                conn.execute(insert(models).values(
                    name=name, description=description, created_at=now(), last_version=0))
            number = _lock_model(conn, name) + 1
            conn.execute(sa_update(models).where(models.c.name == name)
                         .values(last_version=number))
            conn.execute(insert(versions).values(
                name=name, version=number, created_at=now(), **fields))
            return number

        return self._run(run, write=True)

    def get_version(self, name: str, version: int) -> ModelVersion:
        return self._run(lambda conn: _version(conn, name, version))

    def resolve(self, name: str, alias: str | None, version: int | None) -> ModelVersion:
        """The version an alias points at, a given version, or else the latest one."""

        def run(conn: Connection) -> ModelVersion:
            if alias is not None:
                return _version(conn, name, _alias(conn, name, alias))
            if version is not None:
                return _version(conn, name, version)
            return _version(conn, name, _latest(conn, name))

        return self._run(run)

    def latest_version(self, name: str) -> int:
        return self._run(lambda conn: _latest(conn, name))

    def list_versions(self, name: str) -> list[ModelVersion]:
        def run(conn: Connection) -> list[ModelVersion]:
            _require_model(conn, name)
            rows = conn.execute(
                select(versions).where(versions.c.name == name).order_by(versions.c.version)
            ).mappings().all()
            by_version = _aliases_by_version(conn, name)
            return [_record(r, by_version.get(r["version"], [])) for r in rows]

        return self._run(run)

    def list_models(self) -> list[dict[str, Any]]:
        def run(conn: Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                select(models.c.name, models.c.description, func.max(versions.c.version),
                       func.count(versions.c.id))
                .select_from(models.outerjoin(versions, versions.c.name == models.c.name))
                .group_by(models.c.name, models.c.description).order_by(models.c.name)
            ).all()
            by_name: dict[str, dict[str, int]] = {}
            for n, a, v in conn.execute(select(aliases.c.name, aliases.c.alias,
                                               aliases.c.version)):
                by_name.setdefault(n, {})[a] = v
            return [
                {"name": n, "description": d, "latest_version": latest, "versions": count,
                 "aliases": by_name.get(n, {})}
                for n, d, latest, count in rows
            ]

        return self._run(run)

    def delete_version(self, name: str, version: int) -> str | None:
        """Delete a version's record; return its sha256 if no other version uses it."""

        def run(conn: Connection) -> str | None:
            _lock_model(conn, name)
            pointing = conn.execute(select(aliases.c.alias).where(
                aliases.c.name == name, aliases.c.version == version)).scalars().all()
            if pointing:
                raise Conflict(
                    f"{name}:{version} is in use by alias {', '.join(sorted(pointing))}; "
                    "move or remove the alias first"
                )
            sha = conn.execute(select(versions.c.sha256).where(
                versions.c.name == name, versions.c.version == version)).scalar()
            if sha is None:
                raise VersionNotFound(f"model {name!r} has no version {version}")
            conn.execute(delete(versions).where(versions.c.name == name,
                                                versions.c.version == version))
            shared = conn.execute(
                select(func.count()).select_from(versions).where(versions.c.sha256 == sha)
            ).scalar()
            return None if shared else str(sha)

        return self._run(run, write=True)

    # --- aliases --------------------------------------------------------------------

    def get_alias(self, name: str, alias: str) -> int:
        return self._run(lambda conn: _alias(conn, name, alias))

    def set_alias(self, name: str, alias: str, version: int, *,
                  actor: str | None = None, reason: str | None = None) -> int | None:
        """Point `alias` at `version`, record the move, return the version it replaced.

        Setting an alias to the version it already points at changes nothing and
        records nothing: it is not a move, and rollback must not see it as one.
        """

        def run(conn: Connection) -> int | None:
            _lock_model(conn, name)
            _require_version(conn, name, version)
            old = _alias_or_none(conn, name, alias)
            if old != version:
                _move(conn, name, alias, old, version, kind="set", actor=actor, reason=reason)
            return old

        return self._run(run, write=True)

    def remove_alias(self, name: str, alias: str, *, actor: str | None = None,
                     reason: str | None = None) -> int:
        """Remove `alias`, record it, return the version it pointed at."""

        def run(conn: Connection) -> int:
            _lock_model(conn, name)
            old = _alias(conn, name, alias)
            _move(conn, name, alias, old, None, kind="remove", actor=actor, reason=reason)
            return old

        return self._run(run, write=True)

    def rollback(self, name: str, alias: str, *, actor: str | None = None,
                 reason: str | None = None, expect: int | None = None) -> int:
        """Move `alias` back to where it pointed before its last move; return that version.

        With `expect`, only if the alias still points at that version (a guard must not
        undo a move someone made after the one it watches): Conflict otherwise."""

        def run(conn: Connection) -> int:
            _lock_model(conn, name)
            current = _alias(conn, name, alias)
            if expect is not None and current != expect:
                raise Conflict(f"{name}@{alias} points at {current} now, not {expect}: "
                               "not rolled back")
            target = previous_version(_history(conn, name, alias), current)
            if target is None:
                raise Conflict(f"{name}@{alias} has no earlier version to roll back to "
                               f"(it points at {current})")
            if conn.execute(select(versions.c.id).where(
                    versions.c.name == name, versions.c.version == target)).first() is None:
                raise Conflict(f"cannot roll {name}@{alias} back: version {target}, where it "
                               "pointed before, was deleted; set the alias explicitly")
            _move(conn, name, alias, current, target, kind="rollback", actor=actor,
                  reason=reason)
            return target

        return self._run(run, write=True)

    def record_decision(self, name: str, alias: str, kind: str, *, current: int | None,
                        candidate: int, actor: str | None, reason: str) -> None:
        """Record a decision that moved nothing (`refuse`, `hold`) in the alias history."""

        def run(conn: Connection) -> None:
            _require_version(conn, name, candidate)
            conn.execute(insert(alias_events).values(
                name=name, alias=alias, kind=kind, from_version=current,
                to_version=candidate, at=now(), actor=actor, reason=reason))

        self._run(run, write=True)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        def run(conn: Connection) -> list[AliasEvent]:
            _require_model(conn, name)
            return _history(conn, name, alias)

        return self._run(run)

    def alias_map(self) -> dict[tuple[str, str], int]:
        """Every alias at once: what a server polls to follow promotions."""
        rows = self._run(lambda conn: conn.execute(
            select(aliases.c.name, aliases.c.alias, aliases.c.version)).all())
        return {(n, a): int(v) for n, a, v in rows}


def previous_version(events: Sequence[AliasEvent], current: int) -> int | None:
    """Where a rollback of an alias goes, from its history; None when nowhere.

    The history is replayed as a stack of versions: a `set` pushes, a `rollback` pops
    (so rollbacks undo moves one at a time: after 1 → 2 → 3, two rollbacks give 2,
    then 1), a `remove` starts over.
    """
    stack: list[int] = []
    for ev in events:
        if ev.kind == "set" and ev.to_version is not None:
            if not stack or stack[-1] != ev.to_version:
                stack.append(ev.to_version)
        elif ev.kind == "rollback" and stack:
            stack.pop()
        elif ev.kind == "remove":
            stack.clear()
    if len(stack) < 2 or stack[-1] != current:
        return None
    return stack[-2]


# --- queries inside a transaction ----------------------------------------------------


def _lock_model(conn: Connection, name: str) -> int:
    """Take the model's row lock until the transaction ends (on SQLite, BEGIN IMMEDIATE
    already holds the database's write lock); return the last version number issued."""
    last = conn.execute(
        select(models.c.last_version).where(models.c.name == name).with_for_update()).scalar()
    if last is None:
        raise ModelNotFound(f"no model named {name!r}")
    return int(last)


def _require_model(conn: Connection, name: str) -> None:
    if conn.execute(select(models.c.name).where(models.c.name == name)).first() is None:
        raise ModelNotFound(f"no model named {name!r}")


def _require_version(conn: Connection, name: str, version: int) -> None:
    found = conn.execute(select(versions.c.id).where(
        versions.c.name == name, versions.c.version == version)).first()
    if found is None:
        raise VersionNotFound(f"model {name!r} has no version {version}")


def _latest(conn: Connection, name: str) -> int:
    _require_model(conn, name)
    number = conn.execute(
        select(func.max(versions.c.version)).where(versions.c.name == name)).scalar()
    if number is None:
        raise VersionNotFound(f"model {name!r} has no versions")
    return int(number)


def _alias_or_none(conn: Connection, name: str, alias: str) -> int | None:
    number = conn.execute(select(aliases.c.version).where(
        aliases.c.name == name, aliases.c.alias == alias)).scalar()
    return None if number is None else int(number)


def _alias(conn: Connection, name: str, alias: str) -> int:
    number = _alias_or_none(conn, name, alias)
    if number is None:
        _require_model(conn, name)
        raise AliasNotFound(f"model {name!r} has no alias {alias!r}")
    return number


def _move(conn: Connection, name: str, alias: str, old: int | None, new: int | None, *,
          kind: str, actor: str | None, reason: str | None) -> None:
    where = (aliases.c.name == name, aliases.c.alias == alias)
    at = now()
    if new is None:
        conn.execute(delete(aliases).where(*where))
    elif old is None:
        conn.execute(insert(aliases).values(name=name, alias=alias, version=new, updated_at=at))
    else:
        conn.execute(sa_update(aliases).where(*where).values(version=new, updated_at=at))
    conn.execute(insert(alias_events).values(
        name=name, alias=alias, kind=kind, from_version=old, to_version=new, at=at,
        actor=actor, reason=reason))


def _history(conn: Connection, name: str, alias: str | None) -> list[AliasEvent]:
    query = select(alias_events).where(alias_events.c.name == name)
    if alias is not None:
        query = query.where(alias_events.c.alias == alias)
    rows = conn.execute(query.order_by(alias_events.c.id)).mappings().all()
    return [AliasEvent.model_validate({k: v for k, v in r.items() if k != "id"}) for r in rows]


def _aliases_by_version(conn: Connection, name: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias, version in conn.execute(
            select(aliases.c.alias, aliases.c.version).where(aliases.c.name == name)
            .order_by(aliases.c.alias)):
        out.setdefault(int(version), []).append(alias)
    return out


def _version(conn: Connection, name: str, version: int) -> ModelVersion:
    row = conn.execute(select(versions).where(
        versions.c.name == name, versions.c.version == version)).mappings().first()
    if row is None:
        _require_model(conn, name)
        raise VersionNotFound(f"model {name!r} has no version {version}")
    return _record(row, _aliases_by_version(conn, name).get(version, []))


def _record(row: Any, alias_names: list[str]) -> ModelVersion:
    data = {k: v for k, v in row.items() if k != "id"}
    return ModelVersion.model_validate({**data, "aliases": alias_names})
