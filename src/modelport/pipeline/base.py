"""The contracts of pipeline components: frames, retrievers and writers.

A `Frame` is a chunk of rows, columnar: the keys, and one array (or list) per column.
Retrievers answer `get(keys)` for many keys with one query, never one per key; writers
`write(frame)` idempotently (an upsert on the key), so a retried chunk or a redelivered
message leaves exactly one row per key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Key = Hashable


@dataclass
class Frame:
    """Rows as columns: `keys[i]` names row i of every column."""

    keys: list[Key]
    columns: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, rows: Sequence[int]) -> Frame:
        index = np.asarray(rows, dtype=np.intp)
        return Frame([self.keys[i] for i in rows],
                     {k: _take(v, index) for k, v in self.columns.items()})

    def records(self) -> list[dict[str, Any]]:
        cols = {k: v.tolist() if isinstance(v, np.ndarray) else list(v)
                for k, v in self.columns.items()}
        return [{k: cols[k][i] for k in cols} for i in range(len(self.keys))]

    @classmethod
    def from_records(cls, keys: Sequence[Key], records: Sequence[Mapping[str, Any]]) -> Frame:
        if not records:
            return cls(list(keys), {})
        # every record's fields, not the first one's: a record missing a field must not
        # hide that column from the records that have it (the union is taken in C)
        names = list(records[0])
        if len(set().union(*records)) > len(names):
            names = list(dict.fromkeys(n for r in records for n in r))
        # one C-level pass per record, then a transpose: faster than a list per name
        rows = [list(map(r.get, names)) for r in records]
        columns = zip(*rows, strict=True)
        return cls(list(keys), {n: list(c) for n, c in zip(names, columns, strict=True)})


def _take(values: Any, index: np.ndarray) -> Any:
    if isinstance(values, np.ndarray):
        return values[index]
    return [values[i] for i in index.tolist()]


class Component(ABC):  # noqa: B024 - every hook has a sensible default
    """Lifecycle shared by retrievers and writers: connections open at start, close at
    shutdown; `check` raises a ModelportError when the backing service is unusable."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def check(self) -> None:
        return None


class Retriever(Component):
    @abstractmethod
    async def get(self, keys: Sequence[Key]) -> Frame:
        """Rows for `keys` (in any order); keys without data are simply absent.

        A batch job reads its input through `modelport.jobs.sources` (a query of keys
        or rows, or a file), and only looks keys up here: retrievers never scan."""


class Writer(Component):
    max_concurrent_writes: int = 1
    """Frames `write` may be called with at once (a stream worker writes that many
    batches side by side, never two about the same key); 1 for a sink that must
    take them one by one."""

    @abstractmethod
    async def write(self, frame: Frame) -> None:
        """Store one result row per key, replacing an earlier result for that key."""
