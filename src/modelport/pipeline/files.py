"""Files as pipeline components: CSV, Parquet and JSON lines (pyarrow: the `files` extra).

`FileRetriever` reads a file, or a folder of files of one format (what a `FileWriter`
on a folder leaves), through `pyarrow.dataset`: `get` loads it once into memory with an index on the
key column, and again only when a file changes.

`FileWriter` appends: files have no keys to upsert on. A batch job gets exactly one
row per key from its checkpoints (a chunk is written, then checkpointed); a chunk
written just before a crash, and not checkpointed, is written again on resume, so a
reader that must be exact keeps the last row per key. Each `write` of CSV and JSON
lines reaches the operating system before it returns (a process crash loses
nothing written); a Parquet file gets its footer, and becomes readable, at `close()`.
Parquet cannot be appended to: write to a folder (each writer adds a part file) to
add to earlier runs.

Formats follow the suffix (`.csv`, `.parquet`/`.pq`, `.jsonl`/`.ndjson`), or `format`;
a folder defaults to Parquet. A multi-dimensional output (class probabilities) is a
fixed-size list column in Parquet, an array in JSON lines, and JSON text in CSV.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import orjson

from modelport.errors import ConfigError, ModelportError
from modelport.pipeline.base import Frame, Key, Retriever, Writer
from modelport.pipeline.columns import cells, column, dedupe_last, plain_keys

try:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ConfigError("file components need pyarrow: pip install 'modelport[files]'") \
        from exc

Format = Literal["csv", "parquet", "jsonl"]
_SUFFIXES: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
                                ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_DATASET_FORMAT = {"csv": "csv", "parquet": "parquet", "jsonl": "json"}


def _format(path: Path, given: str | None) -> Format:
    if given is not None:
        if given not in _DATASET_FORMAT:
            raise ConfigError(f"file: format must be csv, parquet or jsonl, not {given!r}")
        return given  # type: ignore[return-value]
    if path.is_dir() or not path.suffix:
        return "parquet"
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise ConfigError(f"file: cannot tell the format of {str(path)!r} from its suffix; "
                          "set format: csv, parquet or jsonl") from None


class FileRetriever(Retriever):
    """Rows of a file (or a folder of files) by its `key` column."""

    def __init__(self, path: str | os.PathLike[str], key: str = "id",
                 format: Format | None = None) -> None:
        self.path = Path(path).expanduser()
        self.key = key
        self.format = _format(self.path, format)
        self._table: pa.Table | None = None
        self._index: dict[Any, int] = {}
        self._stamp: tuple[Any, ...] = ()
        self._loading = asyncio.Lock()

    def _dataset(self) -> ds.Dataset:
        if not self.path.exists():
            raise ConfigError(f"file retriever: {str(self.path)!r} does not exist")
        try:
            dataset = ds.dataset(self.path, format=_DATASET_FORMAT[self.format])
        except (pa.ArrowInvalid, OSError) as exc:
            raise ModelportError(f"file {str(self.path)!r}: {exc}") from exc
        if self.key not in dataset.schema.names:
            raise ConfigError(f"file {str(self.path)!r} has no key column {self.key!r} "
                              f"(it has {', '.join(dataset.schema.names)})")
        return dataset

    async def start(self) -> None:
        await asyncio.to_thread(self._dataset)  # a wrong path or key fails at start-up

    async def check(self) -> None:
        await asyncio.to_thread(self._dataset)

    async def get(self, keys: Sequence[Key]) -> Frame:
        async with self._loading:  # one load at a time, not one per waiting request
            await asyncio.to_thread(self._load)
        assert self._table is not None
        found: list[Key] = []
        rows: list[int] = []
        for key in keys:
            row = _lookup(self._index, key)
            if row is not None:
                found.append(key)
                rows.append(row)
        frame = self._frame(self._table.take(rows))
        return Frame(found, frame.columns)

    def _load(self) -> None:
        """Read the whole file into memory and index it, unless it is unchanged."""
        dataset = self._dataset()
        stamp = tuple((f, os.stat(f).st_mtime_ns, os.stat(f).st_size)
                      for f in dataset.files)
        if stamp == self._stamp and self._table is not None:
            return
        table = dataset.to_table()
        index: dict[Any, int] = {}
        for row, key in enumerate(table.column(self.key).to_pylist()):
            index[key] = row  # a key written twice (an appended rerun): the last row wins
        self._table, self._index, self._stamp = table, index, stamp

    def _frame(self, table: pa.Table) -> Frame:
        keys = table.column(self.key).to_pylist()
        return Frame(keys, {name: _numpy(table.column(name)) for name in table.column_names
                            if name != self.key})


def _lookup(index: dict[Any, int], key: Key) -> int | None:
    """The row of `key`, also when the caller's string is the file's integer or back."""
    row = index.get(key)
    if row is None and isinstance(key, str) and key.lstrip("-").isdigit():
        row = index.get(int(key))
    elif row is None and isinstance(key, int):
        row = index.get(str(key))
    return row


def _numpy(values: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_fixed_size_list(values.type):
        flat = values.combine_chunks()
        if flat.null_count == 0 and flat.flatten().null_count == 0:
            matrix: np.ndarray = flat.flatten().to_numpy()
            return matrix.reshape(len(flat), values.type.list_size)
    if pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
        return column(values.to_pylist())
    plain: np.ndarray = values.to_numpy()
    return plain


class FileWriter(Writer):
    """Appends each frame's rows (key first) to a file, or to a part file in a folder."""

    def __init__(self, path: str | os.PathLike[str], format: Format | None = None,
                 key: str = "id", overwrite: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.folder = self.path.is_dir() or str(path).endswith(("/", os.sep))
        self.format = _format(self.path, format)
        self.key, self.overwrite = key, overwrite
        self._target: Path | None = None
        self._file: IO[bytes] | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._columns: list[str] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self.folder:
            await asyncio.to_thread(self.path.mkdir, parents=True, exist_ok=True)
        self._refuse_to_clobber()

    def _refuse_to_clobber(self) -> None:
        if not self.folder and self.format == "parquet" and self.path.exists() \
                and not self.overwrite:
            raise ConfigError(
                f"file writer: {str(self.path)!r} exists and a Parquet file cannot be "
                "appended to; write to a folder (a part file per run), or set overwrite")

    async def write(self, frame: Frame) -> None:
        if not len(frame):
            return
        async with self._lock:  # one frame's rows stay together in the file
            await asyncio.to_thread(self._write, dedupe_last(frame))

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._close)

    def _open(self) -> Path:
        if self._target is None:
            if self.folder:
                stamp = time.strftime("%Y%m%dT%H%M%S")
                suffix = {"csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl"}
                self._target = self.path / f"part-{stamp}-{uuid.uuid4().hex[:8]}" \
                    f"{suffix[self.format]}"
                self.path.mkdir(parents=True, exist_ok=True)
            else:
                self._refuse_to_clobber()
                self._target = self.path
                self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.format != "parquet":
                self._file = open(self._target, "wb" if self.overwrite else "ab")  # noqa: SIM115
        return self._target

    def _write(self, frame: Frame) -> None:
        names = list(frame.columns)
        if self._columns is not None and names != self._columns:
            raise ConfigError(f"file writer: results with columns {names} after "
                              f"{self._columns}; one file has one set of columns")
        self._columns = names
        target = self._open()
        if self.format == "parquet":
            table = _arrow(self.key, frame)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(target, table.schema)
            try:
                self._parquet.write_table(table.cast(self._parquet.schema))
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
                raise ModelportError(f"file {str(target)!r}: {exc}") from exc
            return
        assert self._file is not None
        if self.format == "csv":
            table = pa.table({self.key: plain_keys(frame.keys),
                              **{n: _csv_cells(v) for n, v in frame.columns.items()}})
            pa_csv.write_csv(table, self._file, pa_csv.WriteOptions(
                include_header=self._file.tell() == 0))
        else:
            cols = [cells(frame.columns[n], nested="list") for n in names]
            lines = (orjson.dumps({self.key: k, **dict(zip(names, row, strict=True))},
                                  option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
                     for k, *row in zip(plain_keys(frame.keys), *cols, strict=True))
            self._file.write(b"".join(lines))
        self._file.flush()

    def _close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._file is not None:
            self._file.close()
        self._parquet, self._file, self._target, self._columns = None, None, None, None


def _arrow(key: str, frame: Frame) -> pa.Table:
    arrays: dict[str, pa.Array] = {key: pa.array(plain_keys(frame.keys))}
    for name, values in frame.columns.items():
        arr = values if isinstance(values, np.ndarray) else column(list(values))
        if arr.ndim == 2 and arr.dtype.kind in "biuf":
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(arr.ravel()),
                                                            arr.shape[1])
        else:
            arrays[name] = pa.array(cells(arr, nested="list"))
    return pa.table(arrays)


def _csv_cells(values: Any) -> Any:
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "biuf":
        return values  # numbers go to Arrow without a Python object per cell
    return pa.array(cells(values))
