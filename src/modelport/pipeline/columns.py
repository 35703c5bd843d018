"""Conversions between frames and what backing media hold: rows, cells, keys.

Media hand values back as Python objects (database rows, parsed Redis strings, JSON);
`column` turns one column of them into the numpy array a model takes. Writers go the
other way with `cells`: plain Python values, NaN as a missing value (None), and each
row of a multi-dimensional output (class probabilities `[N, 2]`, an embedding) as one
JSON text, so it fits in one cell of any table, hash or CSV file.

Keys cross media loosely typed: an HTTP caller says `"1001"` for a table whose key is
the integer 1001. `KeyMatch` maps what a medium returns back to the key the caller
gave, so results line up with the request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import orjson

from modelport.pipeline.base import Frame, Key

_NUMBER = (int, float, Decimal, np.integer, np.floating)


def column(values: Sequence[Any]) -> np.ndarray:
    """One column of Python values as an array: numbers → int64/float64 (float64 with
    NaN where a value is missing), booleans → bool, anything else → object."""
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged lists (numpy 2 refuses to guess an object array)
        return _objects(values)
    if arr.dtype.kind in "biuf":
        return arr
    if arr.dtype.kind in "US":
        # fixed-width unicode pads every cell to the longest one: objects are smaller
        return _objects(values)
    if arr.dtype.kind == "O" and arr.ndim == 1 and _numbers_or_missing(values):
        return np.fromiter((math.nan if v is None else float(v) for v in values),
                           dtype=np.float64, count=len(values))
    return arr if arr.ndim == 1 or arr.dtype.kind != "O" else _objects(values)


def _objects(values: Sequence[Any]) -> np.ndarray:
    return np.fromiter(values, dtype=object, count=len(values))


def _numbers_or_missing(values: Iterable[Any]) -> bool:
    seen = False
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, _NUMBER):
            return False
        seen = True
    return seen


def frame_from_records(keys: list[Key], records: Sequence[Mapping[str, Any]]) -> Frame:
    """A frame from one mapping per key; a column a record lacks is missing there."""
    names = list(dict.fromkeys(c for r in records for c in r))
    return Frame(keys, {n: column([r.get(n) for r in records]) for n in names})


def cells(values: Any, *, nested: str = "json") -> list[Any]:
    """A column as plain Python values for a writer: NaN → None; multi-dimensional rows
    as JSON text (`nested="json"`) or as lists (`nested="list"`, for JSON documents)."""
    if isinstance(values, np.ndarray):
        if values.ndim > 1:
            rows = values.tolist()
            return [json_text(r) for r in rows] if nested == "json" else rows
        if values.dtype.kind == "f":
            plain = values.tolist()
            return [None if v != v else v for v in plain] if np.isnan(values).any() else plain
        if values.dtype.kind != "O":
            return list(values.tolist())
        values = values.tolist()
    return [_cell(v, nested) for v in values]


def _cell(value: Any, nested: str) -> Any:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, list | tuple | dict):
        return json_text(value) if nested == "json" else value
    return value


def json_text(value: Any) -> str:
    # orjson writes NaN as null: the text is always valid JSON
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def plain_keys(keys: Sequence[Key]) -> list[Any]:
    """Keys as plain Python values (a numpy integer is not a database parameter)."""
    return [k.item() if isinstance(k, np.generic) else k for k in keys]


def dedupe_last(frame: Frame) -> Frame:
    """One row per key, the last one: an upsert statement may not touch a row twice."""
    if len(set(frame.keys)) == len(frame.keys):  # the usual case, checked in C
        return frame
    last = {k: i for i, k in enumerate(frame.keys)}
    return frame.take(sorted(last.values()))


class KeyMatch:
    """Maps keys a medium returns to the keys a caller asked for, across str/int."""

    def __init__(self, wanted: Iterable[Key]) -> None:
        self.index: dict[Any, Key] = {}
        for key in wanted:
            self.index.setdefault(key, key)
            if not isinstance(key, str):
                self.index.setdefault(str(key), key)

    def __call__(self, found: Any) -> Key | None:
        hit = self.index.get(found)
        if hit is None and not isinstance(found, str):
            hit = self.index.get(str(found))
        return hit
