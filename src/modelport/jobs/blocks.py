"""A batch job run in blocks (the Ray engine): the plan of its blocks, and which are done.

A block is a range of the source: the keys after `lo` up to `hi` (a query), or the rows
from `lo` up to `hi` (a file); `None` is open-ended. The plan is made once, at the start
of a run, and stored beside the run's checkpoint, so that a resumed run reads the same
ranges even if the data moved since. A block is marked done in the same transaction as
the checkpoint's counts and the block's rejects, once every one of its rows is written;
a run killed at any moment redoes only the blocks not marked done, and the writers
upsert, so exactly one row per key remains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from modelport.connections.sql import sql_error
from modelport.jobs.sources import FileRows, Resume, Source
from modelport.pipeline import Key

BLOCKS = "mp_batch_blocks"


@dataclass
class Block:
    index: int
    lo: Key | None
    hi: Key | None
    done: bool = False

    def resume(self, source: Source) -> Resume:
        """Where reading this block starts and stops."""
        if isinstance(source, FileRows):
            return Resume(offset=int(self.lo or 0),  # type: ignore[call-overload]
                          stop=None if self.hi is None else int(self.hi))  # type: ignore[call-overload]
        return Resume(self.lo, until=self.hi)


def plan(source: Source, rows: int) -> list[Block]:
    """Blocks of about `rows` rows each, covering the whole source."""
    edges: list[Key | None] = [None, *source.bounds(rows), None]
    return [Block(i, edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


class BlockTable:
    """The blocks of each job's current run, in the checkpoints' database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.table = sa.Table(
            BLOCKS, sa.MetaData(),
            sa.Column("job_id", sa.String(200), primary_key=True),
            sa.Column("run", sa.Integer, primary_key=True),
            sa.Column("block", sa.Integer, primary_key=True),
            sa.Column("lo", sa.Text),
            sa.Column("hi", sa.Text),
            sa.Column("done", sa.Boolean, nullable=False),
        )

    def open(self, job_id: str, run: int, make: Callable[[], list[Block]]) -> list[Block]:
        """The run's blocks: those stored, or `make()`'s, stored now (in one transaction:
        a run killed while planning plans again)."""
        t = self.table
        try:
            t.create(self.engine, checkfirst=True)
            with self.engine.begin() as conn:
                rows = conn.execute(sa.select(t).where(t.c.job_id == job_id, t.c.run == run)
                                    .order_by(t.c.block)).mappings().all()
                if rows:
                    return [Block(r["block"], _load(r["lo"]), _load(r["hi"]), r["done"])
                            for r in rows]
                blocks = make()
                # the blocks of earlier runs are of no further use
                conn.execute(t.delete().where(t.c.job_id == job_id))
                conn.execute(t.insert(), [
                    {"job_id": job_id, "run": run, "block": b.index, "lo": _dump(b.lo),
                     "hi": _dump(b.hi), "done": False} for b in blocks])
                return blocks
        except SQLAlchemyError as exc:
            raise sql_error("batch blocks", exc) from exc

    def mark_done(self, job_id: str, run: int, block: int) -> Callable[[Connection], None]:
        """What marks `block` done, for the transaction that commits its checkpoint."""
        t = self.table

        def mark(conn: Connection) -> None:
            conn.execute(t.update().where(t.c.job_id == job_id, t.c.run == run,
                                          t.c.block == block).values(done=True))
        return mark


def _dump(key: Key | None) -> str | None:
    return None if key is None else orjson.dumps(key, default=str).decode()


def _load(text: str | None) -> Key | None:
    return None if text is None else orjson.loads(text)
