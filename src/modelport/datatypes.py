"""Open Inference Protocol v2 datatypes and the numpy dtypes behind them.

The v2 protocol names tensor element types (`FP32`, `INT64`, `BYTES`, …); numpy names
them differently. This module is the one place that maps between the two and turns
JSON values into typed arrays, with errors that say where a value went wrong.

The conversion rules, in short: integers are accepted where floats are expected and
integral floats (3.0) where integers are; 0 and 1 count as booleans; strings are never
parsed as numbers, numbers are never turned into strings, and booleans never count as
numbers. `null` (and NaN) is a missing value, an error unless the model allows it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

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
    """The v2 datatype for a numpy dtype; strings, bytes, objects and dates are BYTES."""
    if dtype.kind in "OUSTMm":
        return "BYTES"
    for name, candidate in TO_NUMPY.items():
        # by kind and size, not equality: a big-endian '>f8' is still FP64
        if candidate.kind == dtype.kind and candidate.itemsize == dtype.itemsize:
            return name
    if dtype.kind == "f":
        return "FP64"
    raise InvalidInput(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


def coerce(values: Any, datatype: str, field: str, *, allow_nan: bool = False) -> np.ndarray:
    """Turn `values` (a list or an array) into an array of `datatype`, or say why not.

    `field` names the value in errors ("column 'age'"); errors also give the row of
    the first bad value and what it was. `allow_nan` accepts missing values: NaN/inf
    and `null` in float fields (as NaN), `null` in BYTES fields (as None).
    """
    target = to_numpy(datatype)
    if isinstance(values, np.ndarray) and values.dtype == target and values.size \
            and datatype != "BYTES":
        # typed already (a stream's or a batch job's columns): only NaN is left to check
        return _check_finite(values, field, allow_nan)
    return _coerce(values, target, datatype, field, allow_nan)


def _coerce(values: Any, target: np.dtype[Any], datatype: str, field: str,
            allow_nan: bool) -> np.ndarray:
    if isinstance(values, np.ndarray):
        arr = values
    else:
        # as objects for BYTES: numpy would quietly turn ["a", 5] into ["a", "5"]
        arr = _asarray(values, field, object if datatype == "BYTES" else None)
    sent = _Sent(field, values, arr.shape)
    if datatype == "BYTES":
        return _strings(arr, sent, allow_nan)
    if arr.size == 0:
        return arr.astype(target)
    if arr.dtype.kind == "O":
        # Python values held as objects: let numpy find their common type first
        retyped = _asarray(arr.tolist(), field)
        if retyped.dtype.kind in "biuf":
            arr = retyped
    kind = arr.dtype.kind
    if kind not in "biuf":
        return _from_objects(arr, target, datatype, sent, allow_nan)
    typed = isinstance(values, np.ndarray) and values.dtype.kind != "O"
    if not typed and kind != "b" and target.kind != "b" and _holds_bool(values, arr):
        # numpy reads [True, 2.5] as [1.0, 2.5]; a boolean is never a number here
        sent.reject(datatype, lambda v: not _is_bool(v))
    if target.kind == "b":
        if kind == "b":
            return arr
        if kind in "iu" and np.isin(arr, (0, 1)).all():
            return arr.astype(np.bool_)
        sent.reject("BOOL", _is_bool)
    if kind == "b":
        sent.reject(datatype, lambda v: not _is_bool(v))
    if target.kind in "iu":
        return _integers(arr, target, datatype, sent)
    return _check_finite(arr.astype(target, copy=False), field, allow_nan)


class _Sent:
    """What the caller sent for one field, kept to point at the first bad value."""

    def __init__(self, field: str, values: Any, shape: tuple[int, ...]) -> None:
        self.field = field
        self.values = values
        self.shape = shape  # made on every request: what is only for errors waits

    def where(self, flat_index: int) -> str:
        shape = self.shape
        if not shape:
            return ""
        row_len = max(int(np.prod(shape[1:])), 1) if len(shape) > 1 else 1
        return f" at row {flat_index // row_len}"

    def reject(self, expected: str, ok: Callable[[Any], bool]) -> NoReturn:
        # scan what the caller sent: numpy may have turned [1.5, "abc"] into all-strings
        sent = self.values
        if not isinstance(sent, np.ndarray):
            sent = np.asarray(sent, dtype=object)
        for i, v in enumerate(sent.reshape(-1).tolist()):
            if not ok(v):
                raise InvalidInput(
                    f"{self.field}: expected {expected}, got {_describe(v)}{self.where(i)}"
                )
        raise InvalidInput(f"{self.field}: expected {expected}")


def _strings(arr: np.ndarray, sent: _Sent, allow_nan: bool) -> np.ndarray:
    kind = arr.dtype.kind
    if kind in "UST" or arr.size == 0:
        return arr.astype(object)
    if kind in "Mm":
        return arr.astype(str).astype(object)  # dates travel as ISO 8601 strings
    if kind == "O":
        flat = arr.reshape(-1).tolist()
        if all(isinstance(v, str | bytes) for v in flat):
            return arr
        if allow_nan and all(isinstance(v, str | bytes) or is_missing(v) for v in flat):
            out = np.empty(len(flat), dtype=object)
            out[:] = [None if is_missing(v) else v for v in flat]
            return out.reshape(arr.shape)
    expected = "BYTES (string)"
    sent.reject(expected, lambda v: isinstance(v, str | bytes) or (allow_nan and is_missing(v)))


def _from_objects(
    arr: np.ndarray, target: np.dtype[Any], datatype: str, sent: _Sent, allow_nan: bool
) -> np.ndarray:
    """Values numpy could not type as numbers: nulls among numbers, strings, objects."""
    if target.kind == "f" and arr.dtype.kind == "O":
        flat = arr.reshape(-1).tolist()
        if all(is_missing(v) or _is_number(v) for v in flat):
            # null in a float field is a missing value
            filled = np.array([np.nan if is_missing(v) else v for v in flat], dtype=target)
            return _check_finite(filled.reshape(arr.shape), sent.field, allow_nan)
    if target.kind in "iu":
        # integers past 64 bits stay Python objects in numpy
        info = np.iinfo(target)
        for i, v in enumerate(arr.reshape(-1).tolist()):
            if _is_number(v) and not info.min <= v <= info.max:
                raise InvalidInput(
                    f"{sent.field}: {v!r}{sent.where(i)} is out of range for {datatype}"
                )
    sent.reject(datatype, _is_bool if target.kind == "b" else _is_number)


def _integers(arr: np.ndarray, target: np.dtype[Any], datatype: str, sent: _Sent) -> np.ndarray:
    flat = arr.reshape(-1)
    if arr.dtype.kind == "f":
        integral = np.isfinite(flat) & (np.floor(flat) == flat)
        if not integral.all():
            i = int(np.argmin(integral))
            raise InvalidInput(
                f"{sent.field}: expected {datatype}, got float {flat[i].item()!r}{sent.where(i)}"
            )
    info = np.iinfo(target)
    outside = (flat < info.min) | (flat > info.max)
    if outside.any():
        i = int(np.argmax(outside))
        raise InvalidInput(
            f"{sent.field}: {flat[i].item()!r}{sent.where(i)} is out of range for {datatype}"
        )
    return arr.astype(target, copy=False)


def _describe(value: Any) -> str:
    if value is None or type(value).__name__ == "NAType":
        return "null"
    if _is_bool(value):
        return f"boolean {str(bool(value)).lower()}"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, np.generic):
        value = value.item()
    return f"{type(value).__name__} {value!r}"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not _is_bool(v)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool | np.bool_)


def is_missing(v: Any) -> bool:
    """None, NaN, or pandas' NA: a value that is not there."""
    if v is None or type(v).__name__ == "NAType":
        return True
    return isinstance(v, float | np.floating) and math.isnan(v)


def _holds_bool(values: Any, arr: np.ndarray) -> bool:
    """Whether the list numpy read as `arr` held a boolean. This is on the path of
    every request, so only rows where numpy has a 0 or a 1 (True is read as 1) are
    looked at, and those by the types of each innermost list, which runs in C."""
    suspects = (arr == 0) | (arr == 1)
    if not suspects.any():
        return False
    if arr.ndim >= 2 and isinstance(values, list | tuple):
        rows = np.flatnonzero(suspects.reshape(len(arr), -1).any(axis=1))
        return any(_has_bool_type(values[i]) for i in rows.tolist())
    return _has_bool_type(values)


def _has_bool_type(values: Any) -> bool:
    if isinstance(values, np.ndarray):
        return values.dtype.kind == "b" or (
            values.dtype.kind == "O" and _has_bool_type(values.tolist())
        )
    if not isinstance(values, list | tuple):
        return _is_bool(values)
    if values and isinstance(values[0], list | tuple | np.ndarray):
        return any(_has_bool_type(v) for v in values)
    types = set(map(type, values))
    return bool in types or np.bool_ in types


def _asarray(values: Any, field: str, dtype: type[Any] | None = None) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=dtype)
    except ValueError:
        raise InvalidInput(f"{field}: rows have different lengths (ragged input)") from None
    if arr.dtype.kind == "O" and arr.ndim == 1 and any(
        isinstance(v, list | tuple | np.ndarray) for v in arr.tolist()
    ):
        raise InvalidInput(f"{field}: rows have different lengths (ragged input)")
    return arr


def _check_finite(arr: np.ndarray, field: str, allow_nan: bool) -> np.ndarray:
    if allow_nan or arr.dtype.kind != "f":
        return arr
    finite = np.isfinite(arr)
    if not finite.all():
        flat = finite.reshape(-1)
        i = int(np.argmin(flat))
        value = arr.reshape(-1)[i].item()
        what = "null/NaN" if np.isnan(value) else f"{value}"
        where = f" at row {i // (int(np.prod(arr.shape[1:])) or 1)}" if arr.ndim else ""
        raise InvalidInput(
            f"{field}: {what}{where} is not allowed (this model rejects NaN/inf)"
        )
    return arr


def jsonable(arr: np.ndarray) -> Any:
    """Array to JSON-ready (nested) lists: NaN and infinities become null (JSON has
    neither), bytes become text, dates ISO 8601 strings."""
    kind = arr.dtype.kind
    if kind == "f":
        finite = np.isfinite(arr)
        if finite.all():
            return arr.tolist()
        obj = arr.astype(object)
        obj[~finite] = None
        return obj.tolist()
    if kind == "O":
        return plain(arr.tolist())
    if kind in "Mm":
        return arr.astype(str).tolist()
    return arr.tolist()


def plain(value: Any) -> Any:
    """A value as JSON holds it: NaN and missing values null, arrays nested lists,
    bytes text, dates ISO 8601 text."""
    if isinstance(value, list):
        if all(type(v) is str for v in value):
            return value  # text, the usual object column: nothing to convert, no call each
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value)
    if isinstance(value, np.datetime64 | np.timedelta64):
        return str(value)  # as decode hands dates to the model: ISO 8601 text
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        # JSON holds text; bytes that are not UTF-8 are escaped rather than lost
        return value.decode("utf-8", errors="backslashreplace")
    if is_missing(value) or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def column_datatype(values: np.ndarray) -> str:
    """A column's datatype, reading None, NaN and pandas' <NA> as missing values."""
    if values.dtype.kind != "O":
        return from_numpy(values.dtype)
    present = [v for v in values.tolist() if not is_missing(v)]
    if not present:
        return "FP64"  # nothing but gaps: the likeliest column is numbers with NaN
    if all(isinstance(v, str | bytes) for v in present):
        return "BYTES"
    typed = np.asarray(present)
    if typed.dtype.kind in "iu" and len(present) < len(values):
        return "FP64"  # integers with gaps are floats: a missing value is NaN
    return from_numpy(typed.dtype)


def shape_matches(actual: Sequence[int], expected: Sequence[int]) -> bool:
    return len(actual) == len(expected) and all(
        e == -1 or a == e for a, e in zip(actual, expected, strict=True)
    )
