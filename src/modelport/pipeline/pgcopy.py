"""PostgreSQL binary COPY to and from numpy columns: the bulk path of SQL components.

Moving rows of numbers through Python a value at a time (a tuple per row, an object
per value) costs far more than the database spends on them, while binary COPY cut
into columns by numpy makes no object per value (bench/batch.py times both reads).
So where every column is a fixed-width
number (bool, int2/4/8, float4/8; for writing also int/float arrays of one length
per frame) rows travel as binary COPY, turned into columns, or made from them, with
one numpy structured dtype per chunk of rows.

Reading relies on the protocol sending a COPY's rows one CopyData message per row
(PostgreSQL's protocol documentation: "always one per row"), so rows are counted into
chunks without being parsed. A chunk without NULLs has rows of one size and is cut
up in one numpy call; a chunk with NULLs is read field by field (NULL becomes NaN or
None, as for rows fetched from a cursor). Writing covers what fits the fixed-width layout
and answers None for anything else (text, NaN, which is stored as NULL): the caller
then takes its general path.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import orjson

from modelport.pipeline.columns import column

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + bytes(8)  # flags 0, no header extension
TRAILER = b"\xff\xff"

# type OID → the big-endian numpy dtype of its binary form
SCALARS: dict[int, np.dtype[Any]] = {
    16: np.dtype("?"), 20: np.dtype(">i8"), 21: np.dtype(">i2"), 23: np.dtype(">i4"),
    700: np.dtype(">f4"), 701: np.dtype(">f8")}
# array type OID → its element's type OID
ARRAYS: dict[int, int] = {1000: 16, 1016: 20, 1005: 21, 1007: 23, 1021: 700, 1022: 701}
# what a cursor would have given (Python int, float, bool), as `column` types them
_NATIVE = {"b": np.dtype(np.bool_), "i": np.dtype(np.int64), "f": np.dtype(np.float64)}
_STRUCT = {16: "?", 20: ">q", 21: ">h", 23: ">i", 700: ">f", 701: ">d"}
_I16, _I32 = struct.Struct(">h"), struct.Struct(">i")


def describe(cursor: Any, query: str) -> list[tuple[str, int]]:
    """The name and type OID of each column `query` returns (it runs with LIMIT 0)."""
    cursor.execute(f"SELECT * FROM ({query}) AS mp_describe LIMIT 0")
    return [(str(d.name), int(d.type_code)) for d in cursor.description or []]


def readable(oids: Sequence[int]) -> bool:
    return bool(oids) and all(oid in SCALARS for oid in oids)


class RowDecoder:
    """Rows of fixed-width columns (`readable` OIDs) into one array per column.

    A chunk with NULLs types its columns as `column` does (an integer column with a
    NULL becomes floats with NaN), except the columns in `exact`, which then come back
    as objects holding what a cursor gives (ints and None): keys must not change."""

    def __init__(self, oids: Sequence[int], exact: Sequence[int] = ()) -> None:
        self.oids = list(oids)
        self.exact = set(exact)
        fields: list[tuple[str, Any]] = [("n", ">i2")]
        for i, oid in enumerate(self.oids):
            fields += [(f"l{i}", ">i4"), (f"v{i}", SCALARS[oid])]
        self.dtype = np.dtype(fields)
        self._values = [struct.Struct(_STRUCT[oid]) for oid in self.oids]

    def decode(self, data: bytes | bytearray, rows: int) -> list[np.ndarray]:
        """`rows` rows of binary COPY data (without header or trailer) as columns."""
        # a NULL makes its row shorter and no row is longer: all rows are full-size
        # exactly when the total is
        if len(data) == rows * self.dtype.itemsize:
            arr = np.frombuffer(data, self.dtype)
            if self._valid(arr):
                return [arr[f"v{i}"].astype(_NATIVE[SCALARS[oid].kind])
                        for i, oid in enumerate(self.oids)]
        return self._one_by_one(data, rows)

    def _valid(self, arr: np.ndarray) -> bool:
        return bool((arr["n"] == len(self.oids)).all()) and all(
            bool((arr[f"l{i}"] == SCALARS[oid].itemsize).all())
            for i, oid in enumerate(self.oids))

    def _one_by_one(self, data: bytes | bytearray, rows: int) -> list[np.ndarray]:
        """Rows with NULLs: each field says its length (-1 for NULL), in turn."""
        values: list[list[Any]] = [[] for _ in self.oids]
        pos = 0
        for _ in range(rows):
            (count,) = _I16.unpack_from(data, pos)
            if count != len(self.oids):
                raise ValueError(f"COPY row has {count} fields, expected {len(self.oids)}")
            pos += 2
            for column_values, value in zip(values, self._values, strict=True):
                (size,) = _I32.unpack_from(data, pos)
                pos += 4
                if size < 0:
                    column_values.append(None)
                else:
                    column_values.append(value.unpack_from(data, pos)[0])
                    pos += size
        return [np.array(v, dtype=object) if i in self.exact else column(v)
                for i, v in enumerate(values)]


def copy_out(cursor: Any, query: str, oids: Sequence[int], chunk_size: int,
             exact: Sequence[int] = ()) -> Iterator[list[np.ndarray]]:
    """The rows of `query` (columns of `oids`, see `describe`) in chunks of at most
    `chunk_size` rows, each chunk as one array per column (`exact`: see RowDecoder)."""
    decoder = RowDecoder(oids, exact)
    with cursor.copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)") as copy:
        # each row is copied out of its message at once, which frees the driver's
        # buffer for the next: holding thousands of messages costs more than the copy
        data, rows, first = bytearray(), 0, True
        for message in copy:
            if first:  # the header comes with the first row (or the trailer)
                message, first = _after_header(message), False
            if len(message) <= len(TRAILER):  # the trailer: a row of numbers is longer
                continue
            data += message
            rows += 1
            if rows == chunk_size:
                yield decoder.decode(data, rows)
                data, rows = bytearray(), 0
        if rows:
            yield decoder.decode(data, rows)


def _after_header(message: Any) -> Any:
    head = bytes(message[:len(HEADER)])
    if not head.startswith(SIGNATURE):
        raise ValueError("not a binary COPY stream")
    (extension,) = _I32.unpack_from(head, len(SIGNATURE) + 4)
    return message[len(HEADER) + extension:]


def encode(columns: Sequence[np.ndarray], oids: Sequence[int]) -> bytes | None:
    """Binary COPY data (header to trailer) for the rows `columns` make, into columns
    of `oids`; None when a value does not fit this path (NaN, which is stored as NULL, a
    number out of the column's range, an empty array, a text column of non-strings).

    Text columns (text, varchar, json, jsonb) take strings (None is NULL) or a
    multi-dimensional numeric array, one JSON text per row as `columns.cells` makes it."""
    n = len(columns[0])
    count = np.full(n, len(columns), ">i2").view(np.uint8)
    parts: list[_Field] = [(np.full(n, 2, np.int64), count)]
    for values, oid in zip(columns, oids, strict=True):
        fields = _field(values, oid)
        if fields is None:
            return None
        parts += fields
    return HEADER + _interleave(parts, n).tobytes() + TRAILER


_Field = tuple[np.ndarray, np.ndarray]
"""One column in binary COPY form: each row's size in bytes (field header included),
and all rows' bytes one after the other."""

# text type OID → what its binary form puts before the UTF-8 (jsonb: a version byte)
TEXTS: dict[int, bytes] = {25: b"", 1043: b"", 114: b"", 3802: b"\x01"}


def _field(values: np.ndarray, oid: int) -> list[_Field] | None:
    """One column as the fields `_interleave` puts in each row."""
    n = len(values)
    if oid in TEXTS:
        return _text(values, TEXTS[oid])
    element = SCALARS.get(ARRAYS.get(oid, oid))
    if element is None or values.ndim != (2 if oid in ARRAYS else 1) \
            or not _fits(values, element):
        return None
    if oid in ARRAYS:
        k = values.shape[1]
        if k == 0:
            return None
        item = np.dtype([("l", ">i4"), ("v", element)])
        rows = np.empty(n, np.dtype([("l", ">i4"), ("h", ">i4", (5,)), ("v", item, (k,))]))
        # one dimension: ndim, no NULLs, element type, length, lower bound 1
        rows["l"] = 20 + k * (4 + element.itemsize)
        rows["h"] = (1, 0, ARRAYS[oid], k, 1)
        rows["v"]["l"] = element.itemsize
        rows["v"]["v"] = values
    else:
        rows = np.empty(n, np.dtype([("l", ">i4"), ("v", element)]))
        rows["l"] = element.itemsize
        rows["v"] = values
    return [(np.full(n, rows.dtype.itemsize, np.int64), rows.view(np.uint8).ravel())]


def _text(values: np.ndarray, prefix: bytes) -> list[_Field] | None:
    """A text column as two fields: each value's length (-1 for NULL), then its bytes."""
    if values.ndim > 1 and values.dtype.kind in "biuf":
        texts: list[bytes | None] = [prefix + t for t in _json_rows(values)]
    elif values.ndim == 1 and values.dtype.kind == "O":
        items = values.tolist()
        try:
            # one join checks that every value is a string (a stream's ids are), in C
            joined = "".join(items)
        except TypeError:
            if not all(v is None or isinstance(v, str) for v in items):
                return None
            texts = [None if v is None else prefix + v.encode() for v in items]
        else:
            data = joined.encode()
            lengths = np.fromiter(map(len, items), np.int64, len(items))
            if not prefix and len(data) == len(joined):
                # ASCII, as ids mostly are: a character is a byte, one encode for them all
                return _text_fields(lengths, data)
            texts = [prefix + v.encode() for v in items]
    else:
        return None
    n = len(texts)
    if None in texts:
        lengths = np.fromiter((-1 if t is None else len(t) for t in texts), np.int64, n)
        return _text_fields(lengths, b"".join(t for t in texts if t is not None))
    lengths = np.fromiter(map(len, texts), np.int64, n)  # type: ignore[arg-type]
    return _text_fields(lengths, b"".join(texts))  # type: ignore[arg-type]


def _text_fields(lengths: np.ndarray, data: bytes) -> list[_Field]:
    header = lengths.astype(">i4").view(np.uint8)
    return [(np.full(len(lengths), 4, np.int64), header),
            (np.maximum(lengths, 0), np.frombuffer(data, np.uint8))]


def _json_rows(values: np.ndarray) -> list[bytes]:
    """Each row's JSON text, as `columns.json_text` writes it (NaN and infinities as
    null): for a matrix, one orjson call cut at its rows' `],[` (numbers hold none).
    Narrower floats go row by row, as Python floats, since orjson writes a float32
    array's values in float32's own shortest form."""
    if values.ndim != 2 or not len(values) or (values.dtype.kind == "f" and values.itemsize < 8):
        return [orjson.dumps(r) for r in values.tolist()]
    whole = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
    return [b"[" + row + b"]" for row in whole[2:-2].split(b"],[")]


LENGTHS_MAX = 32
"""Rows whose one field of varying size (a text id) takes at most this many sizes are
put together a size at a time; others are scattered byte by byte."""


def _interleave(fields: Sequence[_Field], n: int) -> np.ndarray:
    """Rows made of each field's bytes in turn.

    Rows of one size take a reshape per field. When one field varies in size (text ids
    of a few lengths), the fields before and after it become two blocks of fixed width,
    and rows are put together one length at a time: a table's rows go in any order."""
    sizes = np.stack([s for s, _ in fields])  # [fields, rows]
    if not n:
        return np.empty(0, np.uint8)
    same = (sizes == sizes[:, :1]).all(axis=1)
    if same.all():
        return np.concatenate([d.reshape(n, -1) for _, d in fields], axis=1)
    varies = np.flatnonzero(~same)
    if len(varies) != 1:
        return _scatter(fields, sizes)
    varying = int(varies[0])
    lengths, data = fields[varying]
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order]
    cuts = np.flatnonzero(np.diff(ordered)) + 1
    if len(cuts) >= LENGTHS_MAX:
        return _scatter(fields, sizes)
    before = _block([d for _, d in fields[:varying]], n)
    after = _block([d for _, d in fields[varying + 1:]], n)
    starts = np.cumsum(lengths) - lengths
    out = []
    for rows in np.split(order, cuts):
        width = int(lengths[rows[0]])
        middle = data[starts[rows][:, None] + np.arange(width)]
        out.append(np.concatenate([before[rows], middle, after[rows]], axis=1).reshape(-1))
    return np.concatenate(out)


def _block(datas: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Fields of one size per row side by side: [rows, their bytes]."""
    if not datas:
        return np.empty((n, 0), np.uint8)
    return np.concatenate([d.reshape(n, -1) for d in datas], axis=1)


def _scatter(fields: Sequence[_Field], sizes: np.ndarray) -> np.ndarray:
    """Rows made of each field's bytes in turn, one copy per field, whatever the sizes."""
    row_sizes = sizes.sum(axis=0)
    row_starts = np.cumsum(row_sizes) - row_sizes
    out = np.empty(int(row_sizes.sum()), np.uint8)
    within = np.cumsum(sizes, axis=0) - sizes  # where each field starts in its row
    for (size, data), offset in zip(fields, within, strict=True):
        source_starts = np.cumsum(size) - size
        # each byte's destination: its row's start, its field's offset, its own place
        out[np.repeat(row_starts + offset - source_starts, size) + np.arange(len(data))] = data
    return out


def _fits(values: np.ndarray, target: np.dtype[Any]) -> bool:
    kind = values.dtype.kind
    if target.kind == "b":
        return kind == "b"
    if target.kind == "f":
        # NaN is stored as NULL, which this layout has no room for
        return kind in "iu" or (kind == "f" and not bool(np.isnan(values).any()))
    if kind not in "iu":
        return False
    if not values.size:
        return True
    info = np.iinfo(target)
    return bool(values.min() >= info.min and values.max() <= info.max)
