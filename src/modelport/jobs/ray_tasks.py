"""What a batch job on Ray runs on the cluster (`modelport.jobs.ray` is the driver):
a read task per block, reading its range of the source in chunks, and the scoring
actors, each a started `Service`, which look a batch's keys up, score and write it, and
answer per block with how many rows they read, how many the block has (on its last
rows) and the rows set aside.

This module imports Ray; only `modelport.jobs.ray` imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from modelport.config import ServiceConfig
from modelport.jobs.blocks import Block
from modelport.jobs.run import rejects_of
from modelport.jobs.sources import Chunk, Source
from modelport.pipeline import Frame
from modelport.service import Service
from modelport.settings import Settings

log = logging.getLogger("modelport.jobs.ray")  # with the driver's: one logger per engine

_KEY, _BLOCK, _TOTAL = "mp_key", "mp_block", "mp_total"
"""Columns the read tasks add to a block's rows: the key, which block, and (on the
block's last rows only, else -1) how many rows the block has."""
_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class _BlockSource(Datasource):
    """A read task per block, each reading its range of the source in chunks."""

    def __init__(self, source: Source, blocks: list[Block], chunk_size: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.source = source
        self.blocks = blocks
        self.chunk_size = chunk_size

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        source, size = self.source, self.chunk_size
        return [ReadTask(lambda b=b: _read(source, b, size),  # type: ignore[misc]
                         BlockMetadata(num_rows=None, size_bytes=None, input_files=None,
                                       exec_stats=None))
                for b in self.blocks]


def _read(source: Source, block: Block, chunk_size: int) -> Iterator[Any]:
    """A block's rows, a chunk at a time; the last chunk says how many there were (one
    chunk is read ahead to know which is last)."""
    held: Chunk | None = None
    rows = 0
    try:
        for chunk in source.chunks(chunk_size, block.resume(source)):
            if held is not None:
                yield _table(held, block.index, -1)
            held, rows = chunk, rows + len(chunk.frame)
        if held is not None:
            yield _table(held, block.index, rows)
    finally:
        source.close()


def _table(chunk: Chunk, block: int, total: int) -> Any:
    n = len(chunk.frame)
    columns = {name: values if isinstance(values, np.ndarray) else np.asarray(values)
               for name, values in chunk.frame.columns.items()}
    columns[_KEY] = np.asarray(chunk.frame.keys)
    columns[_BLOCK] = np.full(n, block, dtype=np.int64)
    columns[_TOTAL] = np.full(n, total, dtype=np.int64)
    return BlockAccessor.batch_to_block(columns)


class _Scorer:
    """One actor of the pool: a started Service, then a batch at a time.

    Ray titles the actors' processes with this name (the tests find them by it)."""

    def __init__(self, settings: Settings, config: ServiceConfig, pipeline: str,
                 lookup: bool, dry_run: bool, cwd: str) -> None:
        started = time.perf_counter()
        if Path(cwd).is_dir():  # on the driver's machine: relative paths mean the same
            os.chdir(cwd)
        self.loop = asyncio.new_event_loop()
        self.service = Service(settings, config, follow=False)
        self.loop.run_until_complete(self.service.start(follow=False, strict=True))
        self.pipeline = self.service.pipeline(pipeline)
        if not lookup:  # rows in hand: the retriever is not used
            self.pipeline.retriever = None
        self.lookup, self.dry_run = lookup, dry_run
        log.info("scoring actor for pipeline %s ready in %.1fs", pipeline,
                    time.perf_counter() - started)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.loop.run_until_complete(self._score(batch))

    async def _score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blocks, totals = batch.pop(_BLOCK), batch.pop(_TOTAL)
        keys = batch.pop(_KEY).tolist()
        asked = Frame(keys, dict(batch))
        if self.lookup:
            assert self.pipeline.retriever is not None
            found = await self.pipeline.retriever.get(keys)
        else:
            found = asked
        scored = await self.pipeline.score(found)
        if not self.dry_run:
            await self.pipeline.write(scored)
        block_of = dict(zip(keys, blocks.tolist(), strict=True))
        per_block: dict[int, list[list[Any]]] = {}
        for r in rejects_of(asked, found, scored):
            per_block.setdefault(block_of[r.key], []).append([r.key, r.reason, r.payload])
        index, read = np.unique(blocks, return_counts=True)
        total = np.array([totals[blocks == b].max() for b in index], dtype=np.int64)
        rejects = np.array([orjson.dumps(per_block.get(int(b), []), default=_default,
                                         option=_OPTS).decode() for b in index], dtype=object)
        return {"block": index, "read": read, "total": total, "rejects": rejects}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # an actor going away: no one to tell
            self.loop.run_until_complete(self.service.stop())


def _default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
