"""In-memory components: the fakes tests (and demos) inject instead of real services."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelport.pipeline.base import Frame, Key, Retriever, Writer


class MemoryRetriever(Retriever):
    def __init__(self, rows: Mapping[Key, Mapping[str, Any]]) -> None:
        self.rows = dict(rows)
        self.calls: list[list[Key]] = []

    async def get(self, keys: Sequence[Key]) -> Frame:
        self.calls.append(list(keys))
        found = [k for k in keys if k in self.rows]
        return Frame.from_records(found, [self.rows[k] for k in found])


class MemoryWriter(Writer):
    max_concurrent_writes = 4  # each frame is stored in one step

    def __init__(self) -> None:
        self.rows: dict[Key, dict[str, Any]] = {}
        self.writes = 0

    async def write(self, frame: Frame) -> None:
        self.writes += 1
        for key, record in zip(frame.keys, frame.records(), strict=True):
            self.rows[key] = record
