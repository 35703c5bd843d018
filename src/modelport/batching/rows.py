"""A batch's rows: the callers' requests joined into one batch, and the model's
outputs split back into each caller's share."""

from __future__ import annotations

import numpy as np

from modelport.signature import Batch


def concat(batches: list[Batch]) -> Batch:
    """The batches' rows, one after the other, input by input."""
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def split(outputs: Batch, sizes: list[int]) -> list[Batch]:
    """`outputs` cut into consecutive parts of `sizes` rows."""
    # plain slices (views, as np.split gives) without np.split's per-call overhead
    parts, start = [], 0
    for size in sizes:
        end = start + size
        parts.append({k: v[start:end] for k, v in outputs.items()})
        start = end
    return parts
