"""Open Inference Protocol v2 datatypes and the numpy dtypes behind them.

The v2 protocol names tensor element types (`FP32`, `INT64`, `BYTES`, …); numpy names
them differently. This module is the one place that maps between the two and turns
JSON values into typed arrays, with errors that say where a value went wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelport.errors import InvalidInput

TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPES = tuple(TO_NUMPY)


def to_numpy(datatype: str) -> np.dtype[Any]:
    try:
        return TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(
            f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


def from_numpy(dtype: np.dtype[Any]) -> str:
    """The v2 datatype for a numpy dtype; strings, bytes and objects are BYTES."""
    if dtype.kind in "OUSTM" or dtype.kind == "m":
        return "BYTES"
    for name, candidate in TO_NUMPY.items():
        if candidate == dtype:
            return name
    if dtype.kind == "f":
        return "FP64"
    raise InvalidInput(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value!r}".lower()
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"{type(value).__name__} {value!r}"


def _first_bad(values: np.ndarray, ok: Any) -> tuple[int, Any]:
    """Index and value of the first element failing `ok`; (0, first) when none does."""
    flat = values.reshape(-1).tolist()
    for i, v in enumerate(flat):
        if not ok(v):
            return i, v
    return 0, flat[0] if flat else None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def coerce(values: Any, datatype: str, field: str, *, allow_nan: bool = False) -> np.ndarray:
    """Turn `values` (a list or an array) into an array of `datatype`, or say why not.

    Integers are accepted where floats are expected and integral floats (3.0) where
    integers are; strings are never parsed as numbers, booleans never count as numbers.
    `null` is read as a missing value: NaN for floats when `allow_nan`, else an error.
    """
    target = to_numpy(datatype)
    arr = values if isinstance(values, np.ndarray) else _asarray(values, field)
    if arr.size == 0:
        return arr.astype(target)
    kind = arr.dtype.kind
    row_len = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1

    def where(i: int) -> str:
        return f"at row {i // row_len}" if arr.ndim > 0 else ""

    def first_bad(ok: Any) -> tuple[int, Any]:
        # scan what the caller sent: numpy may have turned [1.5, "abc"] into all-strings
        sent = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
        return _first_bad(sent, ok)

    if datatype == "BYTES":
        if kind in "US":
            return arr.astype(object)
        if kind == "O":
            i, bad = first_bad(lambda v: isinstance(v, str | bytes))
            if not isinstance(bad, str | bytes):
                raise InvalidInput(f"{field}: expected BYTES (string), got {_describe(bad)} {where(i)}")
            return arr
        return arr.astype(str).astype(object)
    if kind == "O":
        # rows of Python values: let numpy find their common type first
        retyped = _asarray(arr.tolist(), field)
        if retyped.dtype.kind in "biuf":
            arr, kind = retyped, retyped.dtype.kind
    if kind in "OUS":
        if target.kind == "f" and kind == "O":
            flat = arr.reshape(-1).tolist()
            if all(v is None or _is_number(v) for v in flat):
                # null in a float field is a missing value
                filled = np.array([np.nan if v is None else v for v in flat], dtype=target)
                return _check_finite(filled.reshape(arr.shape), field, allow_nan)
        i, bad = first_bad(_is_bool if target.kind == "b" else _is_number)
        raise InvalidInput(f"{field}: expected {datatype}, got {_describe(bad)} {where(i)}")
    if target.kind == "b":
        if kind == "b":
            return arr
        if kind in "iu" and np.isin(arr, (0, 1)).all():
            return arr.astype(np.bool_)
        i, bad = first_bad(_is_bool)
        raise InvalidInput(f"{field}: expected BOOL, got {_describe(bad)} {where(i)}")
    if kind == "b":
        i, bad = first_bad(lambda v: not isinstance(v, bool))
        raise InvalidInput(f"{field}: expected {datatype}, got {_describe(bad)} {where(i)}")
    if target.kind in "iu":
        if kind == "f":
            finite = np.isfinite(arr)
            integral = finite & (np.floor(arr) == arr)
            if not integral.all():
                i = int(np.argmin(integral.reshape(-1)))
                bad = arr.reshape(-1)[i].item()
                raise InvalidInput(f"{field}: expected {datatype}, got float {bad!r} {where(i)}")
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise InvalidInput(f"{field}: value out of range for {datatype}")
        return arr.astype(target, copy=False)
    return _check_finite(arr.astype(target, copy=False), field, allow_nan)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool | np.bool_)


def _asarray(values: Any, field: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except ValueError:
        raise InvalidInput(f"{field}: rows have different lengths (ragged input)") from None
    if arr.dtype.kind == "O" and arr.ndim == 1 and any(isinstance(v, list) for v in arr):
        raise InvalidInput(f"{field}: rows have different lengths (ragged input)")
    return arr


def _check_finite(arr: np.ndarray, field: str, allow_nan: bool) -> np.ndarray:
    if allow_nan or arr.dtype.kind != "f":
        return arr
    finite = np.isfinite(arr)
    if not finite.all():
        flat = finite.reshape(-1)
        i = int(np.argmin(flat))
        row_len = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
        value = arr.reshape(-1)[i].item()
        what = "null/NaN" if np.isnan(value) else f"{value}"
        raise InvalidInput(
            f"{field}: {what} at row {i // row_len} is not allowed (this model rejects NaN/inf)"
        )
    return arr


def jsonable(arr: np.ndarray) -> list[Any]:
    """Array to JSON-ready lists; NaN and infinities become null (JSON has neither)."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        obj = arr.astype(object)
        obj[~np.isfinite(arr)] = None
        return obj.tolist()  # type: ignore[no-any-return]
    if arr.dtype.kind == "O":
        return [v.decode() if isinstance(v, bytes) else v for v in arr.reshape(-1).tolist()] \
            if arr.ndim == 1 else [jsonable(row) for row in arr]
    return arr.tolist()  # type: ignore[no-any-return]


def shape_matches(actual: Sequence[int], expected: Sequence[int]) -> bool:
    return len(actual) == len(expected) and all(
        e == -1 or a == e for a, e in zip(actual, expected, strict=True)
    )
