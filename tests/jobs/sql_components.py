"""Small SQL components for the batch tests (stand-ins until pipeline/sql.py lands).

`PgRetriever` looks rows up by key with one `= ANY(:keys)` query; `PgWriter` upserts
(`INSERT … ON CONFLICT (key) DO UPDATE`). Both run SQLAlchemy off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from modelport.pipeline import Frame, Key, Retriever, Writer


class PgRetriever(Retriever):
    def __init__(self, url: str, table: str, key: str = "id") -> None:
        self.url, self.table, self.key = url, table, key
        self.engine = sa.create_engine(url)
        self.meta = sa.MetaData()
        self.calls = 0

    def _get(self, keys: Sequence[Key]) -> Frame:
        t = sa.Table(self.table, self.meta, autoload_with=self.engine) \
            if self.table not in self.meta.tables else self.meta.tables[self.table]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c[self.key].in_(list(keys)))).mappings().all()
        names = [c.name for c in t.columns if c.name != self.key]
        return Frame([r[self.key] for r in rows],
                     {n: np.asarray([r[n] for r in rows], dtype=object) for n in names})

    async def get(self, keys: Sequence[Key]) -> Frame:
        self.calls += 1
        return await asyncio.to_thread(self._get, keys)

    async def close(self) -> None:
        self.engine.dispose()


class PgWriter(Writer):
    def __init__(self, url: str, table: str, key: str = "id") -> None:
        self.url, self.table, self.key = url, table, key
        self.engine = sa.create_engine(url)

    def _write(self, frame: Frame) -> None:
        meta = sa.MetaData()
        t = sa.Table(self.table, meta, autoload_with=self.engine)
        rows: list[dict[str, Any]] = [
            {self.key: k, **{c: v for c, v in r.items() if c in t.c}}
            for k, r in zip(frame.keys, frame.records(), strict=True)]
        stmt = insert(t)
        stmt = stmt.on_conflict_do_update(
            index_elements=[self.key],
            set_={c.name: stmt.excluded[c.name] for c in t.columns if c.name != self.key})
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)

    async def write(self, frame: Frame) -> None:
        await asyncio.to_thread(self._write, frame)

    async def close(self) -> None:
        self.engine.dispose()
