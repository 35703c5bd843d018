"""Compact profiles of input data, and drift against them.

A profile is stored with each registered version: per feature, its quantiles and a
histogram over bins cut at the reference quantiles. Live data is binned the same way
and compared with the population stability index (PSI): below 0.1 is stable, 0.1-0.25
is a shift worth a look, above 0.25 a significant drift.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from modelport.signature import Batch, Signature

MAX_FEATURES = 256
BINS = 10
TOP_VALUES = 20
MAX_VALUE_CHARS = 100  # a free-text column must not blow up the stored profile


def features(batch: Batch, signature: Signature) -> dict[str, np.ndarray]:
    """One 1-D array per feature; a tensor input contributes one feature per position."""
    out: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        arr = batch[spec.name]
        if arr.ndim == 1:
            out[spec.name] = arr
        elif arr.ndim == 2:
            # capped per column, not per input: one wide tensor alone may exceed the cap
            for j in range(min(arr.shape[1], MAX_FEATURES - len(out))):
                out[f"{spec.name}[{j}]"] = arr[:, j]
        if len(out) >= MAX_FEATURES:
            break
    return out


def profile(batch: Batch, signature: Signature) -> dict[str, Any]:
    """`{"rows": n, "features": {name: feature profile}}`, JSON-ready.

    A numeric feature records count, missing, mean, std, min, max, quantiles and a
    histogram (`edges`, `counts`); a categorical one (strings, booleans) its count,
    missing, number of distinct values and the most frequent ones (`top`).
    """
    result: dict[str, Any] = {"rows": int(next(iter(batch.values())).shape[0]), "features": {}}
    for name, values in features(batch, signature).items():
        result["features"][name] = _profile_one(values)
    return result


def _profile_one(values: np.ndarray) -> dict[str, Any]:
    # booleans are categories: binned as numbers they fall in one bin and never drift
    return _numeric(values) if values.dtype.kind in "iuf" else _categorical(values)


def _numeric(values: np.ndarray) -> dict[str, Any]:
    x = values.astype(np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return {"kind": "numeric", "count": int(x.size), "missing": int(x.size)}
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, BINS + 1)))
    counts = _histogram(finite, edges)
    return {
        "kind": "numeric",
        "count": int(x.size),
        "missing": int(x.size - finite.size),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "quantiles": {f"{q:.2f}": float(v) for q, v in
                      zip((0.01, 0.25, 0.5, 0.75, 0.99),
                          np.quantile(finite, (0.01, 0.25, 0.5, 0.75, 0.99)), strict=True)},
        "edges": edges.tolist(),
        "counts": counts.tolist(),
    }


def _categorical(values: np.ndarray) -> dict[str, Any]:
    all_values = values.tolist()
    present = [v for v in all_values if not _missing(v)]
    counts = Counter(category(v) for v in present)
    # most_common breaks ties by first occurrence; sort for a stable, readable order
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_VALUES]
    return {
        "kind": "categorical",
        "count": len(all_values),
        "missing": len(all_values) - len(present),
        "distinct": len(counts),
        "top": dict(top),
    }


def category(value: Any) -> str:
    """The key a categorical value is counted under (in profiles and in drift)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value)[:MAX_VALUE_CHARS]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _histogram(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # open-ended outer bins so live values outside the reference range still count
    inner = edges[1:-1]
    return np.bincount(np.searchsorted(inner, x, side="right"), minlength=max(len(edges) - 1, 1))


def psi(reference: dict[str, Any], values: np.ndarray) -> float | None:
    """Population stability index of `values` against a feature's reference profile."""
    eps = 1e-4
    if reference.get("kind") == "numeric" and "edges" in reference:
        x = values.astype(np.float64)
        x = x[np.isfinite(x)]
        if x.size == 0:
            return None
        expected = np.asarray(reference["counts"], dtype=np.float64)
        actual = _histogram(x, np.asarray(reference["edges"])).astype(np.float64)
    elif reference.get("kind") == "categorical":
        keys = list(reference["top"])
        seen = Counter(category(v) for v in values.tolist() if not _missing(v))
        present = reference["count"] - reference.get("missing", 0)
        expected = np.asarray([reference["top"][k] for k in keys] +
                              [present - sum(reference["top"].values())], np.float64)
        actual = np.asarray([seen[k] for k in keys] +
                            [seen.total() - sum(seen[k] for k in keys)], np.float64)
    else:
        return None
    p = np.maximum(expected / max(expected.sum(), 1), eps)
    q = np.maximum(actual / max(actual.sum(), 1), eps)
    return float(np.sum((q - p) * np.log(q / p)))
