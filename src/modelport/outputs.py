"""Which outputs a caller asks for, and how a shared batch carries each caller's ask.

A caller may ask for some of a model's outputs (OIP v2's `outputs`, the JSON API's
`"outputs": [...]`, a pipeline's `outputs:`); the flavor then computes only those
(`Flavor.predict_only`): a label costs no probabilities. The batcher merges callers'
rows into one model call and knows nothing of outputs, so each caller's batch carries
one more column, `COLUMN`: per row, a bit per signature output it asked for. A model
call computes the union of its batch's bits, and each caller keeps its own outputs
from its rows of the answer, so callers asking different outputs batch together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.errors import InvalidInput
from modelport.signature import Batch, Signature

COLUMN = "\x00outputs"
"""The batch column of asked-for outputs (a name no input can clash with in practice:
input names come from DataFrame columns and JSON keys people write)."""

_MAX = 62
"""More outputs than bits in an int64: every call computes all of them."""


def read_outputs(raw: Any, where: str = "\"outputs\"") -> list[str] | None:
    """A request's list of output names (or `{"name": …}` objects); None if absent."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(f"{where} must be a non-empty list of output names")
    names = []
    for i, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(name, str):
            raise InvalidInput(f"{where}[{i}] must be an output name (a string), "
                               f"got {item!r}")
        names.append(name)
    return names


@dataclass(frozen=True)
class Outputs:
    """The outputs a signature declares, and the bits that stand for them in `COLUMN`."""

    names: tuple[str, ...]
    """Declared, in order; empty when the signature declares none (nothing is known
    before the model answers: it computes all, and names are checked after)."""

    @classmethod
    def of(cls, signature: Signature) -> Outputs:
        return cls(tuple(spec.name for spec in signature.outputs))

    @property
    def selective(self) -> bool:
        return 0 < len(self.names) <= _MAX

    def ask(self, requested: Sequence[str] | None) -> frozenset[str] | None:
        """The outputs to answer; None for all (nothing asked, or everything). A 400
        naming the unknown ones, before any model call."""
        if requested is None:
            return None
        asked = frozenset(requested)
        if self.names:
            unknown = sorted(asked.difference(self.names))
            if unknown:
                raise InvalidInput(f"unknown output{'s' if len(unknown) > 1 else ''} "
                                   f"{', '.join(map(repr, unknown))}; this model returns "
                                   f"{list(self.names)}")
            if len(asked) == len(self.names):
                return None
        return asked

    def tag(self, batch: Batch, asked: frozenset[str] | None) -> Batch:
        """`batch` with its `COLUMN`: every batch gets one (the batcher merges only
        batches with the same columns), zero bits meaning all outputs."""
        bits = 0
        if asked is not None and self.selective:
            bits = sum(1 << i for i, name in enumerate(self.names) if name in asked)
        rows = len(next(iter(batch.values()))) if batch else 0
        return {**batch, COLUMN: np.full(rows, bits, np.int64)}

    def untag(self, batch: Batch) -> tuple[Batch, frozenset[str] | None]:
        """The model's inputs, and the outputs any of the batch's callers asked for
        (None: all of them)."""
        inputs = {k: v for k, v in batch.items() if k != COLUMN}
        column = batch.get(COLUMN)
        if column is None or not self.selective or not len(column):
            return inputs, None
        if not column.all():  # a caller asked for all (zero bits)
            return inputs, None
        bits = int(np.bitwise_or.reduce(column))
        return inputs, frozenset(n for i, n in enumerate(self.names) if bits >> i & 1)

    def keep(self, answer: Batch, asked: frozenset[str] | None) -> Batch:
        """The caller's own outputs from its rows of the batch's answer, in the
        signature's order."""
        if asked is None:
            return answer
        unknown = sorted(asked - answer.keys())
        if unknown:  # only when the signature declares no outputs to check against
            raise InvalidInput(f"unknown output{'s' if len(unknown) > 1 else ''} "
                               f"{', '.join(map(repr, unknown))}; this model returns "
                               f"{list(answer)}")
        return {k: v for k, v in answer.items() if k in asked}
