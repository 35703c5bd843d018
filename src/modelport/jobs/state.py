"""A batch job's durable state: checkpoints, and the rows it set aside (rejects).

Checkpoints live in `mp_batch_checkpoints`, one row per job, in the pipeline writer's
database when it has one (else the registry's). A chunk's checkpoint is saved only
after its results are written, so a job killed at any moment resumes at the first
chunk that may not have been committed; writes are upserts, so redoing that chunk
leaves exactly one row per key. Rejects go in the same transaction as the checkpoint
when they are kept in a table (`<writer table>_rejects`), so they are exact too; a
rejects file is cut back to its committed length when a job resumes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from modelport.connections.sql import make_engine, sql_error
from modelport.errors import ConfigError
from modelport.jobs.definition import differences
from modelport.pipeline import Key

CHECKPOINTS = "mp_batch_checkpoints"
# non-str keys: column names may be str subclasses (SQLAlchemy's quoted_name)
_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass
class Checkpoint:
    """What a job has committed so far (counts are over every run since it started)."""

    job_id: str
    pipeline: str
    source: str
    run: int = 1
    status: str = "running"
    chunks: int = 0
    last_key: Key | None = None
    read: int = 0
    written: int = 0
    rejected: int = 0
    rejects_offset: int = 0
    definition: str = ""
    """The job's definition (`modelport.jobs.definition`): a run of another one does
    not resume this checkpoint."""


@dataclass
class RejectRow:
    key: Key
    reason: str
    payload: dict[str, Any] | None


def _json(value: Any) -> str:
    return orjson.dumps(value, default=_default, option=_OPTS).decode()


def _default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars of kinds orjson does not know
        return value.item()
    return str(value)


class RejectsFile:
    """Rejects as JSON lines; cut back to the committed length on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def resume(self, offset: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            # lines written after the last checkpoint belong to a chunk that is redone
            f.truncate(offset)

    def append(self, job_id: str, run: int, rejects: list[RejectRow]) -> int:
        """Append and fsync (the checkpoint saved next says these lines are there)."""
        now = datetime.now(UTC).isoformat()
        with self.path.open("ab") as f:
            for r in rejects:
                f.write(orjson.dumps(
                    {"key": r.key, "reason": r.reason, "payload": r.payload, "job_id": job_id,
                     "run": run, "time": now},
                    default=_default, option=_OPTS) + b"\n")
            f.flush()
            os.fsync(f.fileno())
            return f.tell()


class JobState:
    """Checkpoints (and a rejects table) in one database, rejects file optional."""

    def __init__(self, url: str, *, rejects_table: str | None = None,
                 rejects_file: Path | None = None) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)
        self.meta = sa.MetaData()
        self.checkpoints = sa.Table(
            CHECKPOINTS, self.meta,
            sa.Column("job_id", sa.String(200), primary_key=True),
            sa.Column("pipeline", sa.String(200), nullable=False),
            sa.Column("source", sa.Text, nullable=False),
            sa.Column("run", sa.Integer, nullable=False),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("chunks", sa.Integer, nullable=False),
            sa.Column("last_key", sa.Text),
            sa.Column("rows_read", sa.BigInteger, nullable=False),
            sa.Column("rows_written", sa.BigInteger, nullable=False),
            sa.Column("rows_rejected", sa.BigInteger, nullable=False),
            sa.Column("rejects_offset", sa.BigInteger, nullable=False),
            sa.Column("definition", sa.Text),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )
        self.rejects_file = RejectsFile(rejects_file) if rejects_file else None
        self.rejects: sa.Table | None = None
        if rejects_file is None and rejects_table:
            schema, _, name = rejects_table.rpartition(".")
            self.rejects = sa.Table(
                name, self.meta,
                sa.Column("job_id", sa.String(200), primary_key=True),
                sa.Column("run", sa.Integer, primary_key=True),
                sa.Column("key", sa.String(500), primary_key=True),
                sa.Column("reason", sa.Text, nullable=False),
                sa.Column("payload", sa.Text),
                sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                schema=schema or None,
            )

    def describe_rejects(self) -> str:
        if self.rejects_file is not None:
            return self.rejects_file.describe()
        if self.rejects is not None:
            return f"table {self.rejects.fullname}"
        return "nowhere"

    def open(self, job_id: str, pipeline: str, source: str, *, fresh: bool,
             definition: str = "") -> Checkpoint:
        """The job's checkpoint to continue from, or a new run's (after a finished one);
        a ConfigError when the unfinished run was of another source or definition."""
        try:
            self.meta.create_all(self.engine)
            self._add_definition_column()
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(self.checkpoints).where(
                    self.checkpoints.c.job_id == job_id).with_for_update()).mappings().first()
                if row is not None and row["status"] != "done" and not fresh:
                    if (row["pipeline"], row["source"]) != (pipeline, source):
                        # its last key or row offset means nothing for another source
                        raise ConfigError(
                            f"job {job_id!r} has an unfinished run of pipeline "
                            f"{row['pipeline']!r} over {row['source']}; resume it with the "
                            "same source, or start over with --fresh")
                    _same_definition(job_id, row["definition"], definition)
                    cp = _checkpoint(row)
                    cp.definition = cp.definition or definition  # one stored before them
                else:
                    cp = Checkpoint(job_id, pipeline, source,
                                    run=row["run"] + 1 if row is not None else 1,
                                    definition=definition)
                    self._save(conn, cp, insert=row is None, started=True)
        except SQLAlchemyError as exc:
            raise sql_error(f"batch checkpoints in {self._where()}", exc) from exc
        if self.rejects_file is not None:
            self.rejects_file.resume(cp.rejects_offset)
        return cp

    def _add_definition_column(self) -> None:
        """Checkpoint tables made before definitions were stored get the column (their
        rows have none, and resume as they did)."""
        names = {c["name"] for c in sa.inspect(self.engine).get_columns(CHECKPOINTS)}
        if "definition" not in names:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {CHECKPOINTS} ADD COLUMN definition TEXT")

    def commit(self, cp: Checkpoint, rejects: list[RejectRow],
               also: Callable[[Connection], None] | None = None) -> None:
        """Record a chunk as done (its results are already written), with its rejects;
        `also` writes more in the same transaction (a block marked done)."""
        if rejects and self.rejects_file is not None:
            cp.rejects_offset = self.rejects_file.append(cp.job_id, cp.run, rejects)
        try:
            with self.engine.begin() as conn:
                if rejects and self.rejects is not None:
                    self._reject(conn, cp, rejects)
                self._save(conn, cp)
                if also is not None:
                    also(conn)
        except SQLAlchemyError as exc:
            raise sql_error(f"saving a checkpoint in {self._where()}", exc) from exc

    def finish(self, cp: Checkpoint, status: str) -> None:
        cp.status = status
        try:
            with self.engine.begin() as conn:
                self._save(conn, cp)
        except SQLAlchemyError as exc:
            raise sql_error(f"saving a checkpoint in {self._where()}", exc) from exc

    def close(self) -> None:
        self.engine.dispose()

    def _where(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def _reject(self, conn: Connection, cp: Checkpoint, rejects: list[RejectRow]) -> None:
        assert self.rejects is not None
        t = self.rejects
        keys = [str(r.key) for r in rejects]
        # delete, then insert: a chunk redone after a crash replaces its rejects
        conn.execute(t.delete().where(t.c.job_id == cp.job_id, t.c.run == cp.run,
                                      t.c.key.in_(keys)))
        now = datetime.now(UTC)
        latest = {str(r.key): r for r in rejects}  # a key twice in one chunk: keep one
        conn.execute(t.insert(), [
            {"job_id": cp.job_id, "run": cp.run, "key": k, "reason": r.reason,
             "payload": None if r.payload is None else _json(r.payload), "created_at": now}
            for k, r in latest.items()])

    def _save(self, conn: Connection, cp: Checkpoint, *, insert: bool = False,
              started: bool = False) -> None:
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "pipeline": cp.pipeline, "source": cp.source, "run": cp.run, "status": cp.status,
            "chunks": cp.chunks,
            "last_key": None if cp.last_key is None else _json(cp.last_key),
            "rows_read": cp.read, "rows_written": cp.written, "rows_rejected": cp.rejected,
            "rejects_offset": cp.rejects_offset, "definition": cp.definition or None,
            "updated_at": now}
        if started:
            values["started_at"] = now
        t = self.checkpoints
        if insert:
            conn.execute(t.insert().values(job_id=cp.job_id, **values))
        else:
            conn.execute(t.update().where(t.c.job_id == cp.job_id).values(**values))


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(
        job_id=row["job_id"], pipeline=row["pipeline"], source=row["source"], run=row["run"],
        status=row["status"], chunks=row["chunks"],
        last_key=None if row["last_key"] is None else orjson.loads(row["last_key"]),
        read=row["rows_read"], written=row["rows_written"], rejected=row["rows_rejected"],
        rejects_offset=row["rejects_offset"], definition=row["definition"] or "")


def _same_definition(job_id: str, stored: str | None, now: str) -> None:
    if not stored or not now or stored == now:
        return
    raise ConfigError(
        f"job {job_id!r} has an unfinished run of another definition "
        f"({'; '.join(differences(stored, now))}): its checkpoint would leave this run's "
        "output without the rows already done; run the job as it was to resume it, or "
        "start over with --fresh")
