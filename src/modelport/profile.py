"""Compact profiles of input data, and drift against them.

A profile is stored with each registered version: per feature, its quantiles and a
histogram over bins cut at the reference quantiles. Live data is binned the same way
and compared with the population stability index (PSI): below 0.1 is stable, 0.1-0.25
is a shift worth a look, above 0.25 a significant drift.

Three kinds of feature (`kind` in each feature's profile):

- `numeric`: a number column, or one position of a numeric tensor (a feature vector);
- `categorical`: strings or booleans, counted by value (the most frequent ones, the
  rest as "other");
- `set`: a 2-D tensor of strings (say the ids of a user's last 50 tracks, padded with
  ""): its positions are not features, so it is profiled once, as a set per row: the
  distribution of its size (the present, non-empty values) and how often each value
  occurs in it. Scoring position j of an id list on its own reads the natural churn of
  ids as drift.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from modelport.signature import Batch, Signature

MAX_FEATURES = 256
BINS = 10
TOP_VALUES = 20
TOP_ITEMS = 50
"""Values counted one by one in a set-valued feature's profile; the rest are "other"."""
MAX_VALUE_CHARS = 100  # a free-text column must not blow up the stored profile


def features(batch: Batch, signature: Signature) -> dict[str, np.ndarray]:
    """One array per feature: 1-D for a column; a numeric tensor contributes one
    feature per position, a 2-D tensor of strings one set-valued (2-D) feature."""
    out: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        arr = batch[spec.name]
        if arr.ndim == 1 or is_set(arr):
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


def is_set(values: np.ndarray) -> bool:
    """A 2-D tensor of strings: a list of ids or tokens per row, not a feature vector."""
    return values.ndim == 2 and values.dtype.kind in "OUS"


def _profile_one(values: np.ndarray) -> dict[str, Any]:
    if values.ndim == 2:
        return _set(values)
    # booleans are categories: binned as numbers they fall in one bin and never drift
    return _numeric(values) if values.dtype.kind in "iuf" else _categorical(values)


def set_items(rows: np.ndarray | list[Any]) -> tuple[np.ndarray, Counter[str]]:
    """Each row's size (present, non-empty values) and every value's occurrences."""
    sizes, items = [], Counter[str]()
    for row in rows.tolist() if isinstance(rows, np.ndarray) else rows:
        present = [category(v) for v in row or () if not _missing(v) and v != ""] \
            if isinstance(row, list | tuple) else []
        sizes.append(len(present))
        items.update(present)
    return np.asarray(sizes, dtype=np.float64), items


def _set(values: np.ndarray) -> dict[str, Any]:
    sizes, items = set_items(values)
    top = sorted(items.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ITEMS]
    return {
        "kind": "set",
        "count": int(values.shape[0]),
        "width": int(values.shape[1]),
        "size": _numeric(sizes),
        "items": items.total(),
        "distinct": len(items),
        "top": dict(top),
    }


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


def set_distance(reference: dict[str, Any], items: Counter[str]) -> float | None:
    """Jensen-Shannon distance (base 2: 0 same, 1 disjoint) between a set-valued
    feature's value frequencies and the reference's, over its top values + "other".

    Bounded and symmetric, unlike PSI, whose log blows up on the near-empty buckets
    that a long tail of ids leaves: a value new since training is "other", not drift."""
    if not items:
        return None
    top: dict[str, int] = reference.get("top", {})
    expected = np.asarray([*top.values(), reference.get("items", 0) - sum(top.values())],
                          np.float64)
    known = sum(items[k] for k in top)
    actual = np.asarray([items[k] for k in top] + [items.total() - known], np.float64)
    return js_distance(expected, actual)


def js_distance(expected: np.ndarray, actual: np.ndarray) -> float | None:
    if expected.sum() <= 0 or actual.sum() <= 0:
        return None
    p, q = expected / expected.sum(), actual / actual.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.sqrt(max((kl(p) + kl(q)) / 2, 0.0)))
