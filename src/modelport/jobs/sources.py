"""Where a batch job's input comes from: a query (of keys or of rows, in
`modelport.jobs.query`), or a file of rows (here), and what every source answers.

The one reader of batch input: a job's input is not its pipeline's retriever (a query
on any database, a file named on the command line), and what a job needs of it
(resuming, a count, an identity for the job id) belongs here; retrievers only look
keys up.

A source hands out chunks in a deterministic order and can start again part-way: a
query after the last committed key (it is read in key order, so "after" is exact), a
file after the rows already consumed. Sources are synchronous (SQLAlchemy, psycopg,
pandas, pyarrow) and the batch job drives each one from a single thread of its own,
off the event loop; only `count` (for the progress display) may run in another thread
meanwhile, so it must not share the reader's connection. Nothing here holds more than
a chunk: queries stream (binary COPY, or a server-side cursor), files are read chunk
by chunk.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import ConfigError
from modelport.pipeline import Frame, Key


@dataclass
class Resume:
    """Where a resumed job starts: after `last_key` (queries) or `offset` rows (files);
    and, for one block of a job run in blocks (`modelport.jobs.blocks`), where it ends:
    at the key `until` (included) or before the row `stop`."""

    last_key: Key | None = None
    offset: int = 0
    until: Key | None = None
    stop: int | None = None


@dataclass
class Chunk:
    """One chunk of input; for a keys query the frame holds only keys (no columns)."""

    frame: Frame
    last_key: Key | None


class Source(ABC):
    lookup: bool
    """True when chunks hold keys for the pipeline's retriever to look up."""

    @abstractmethod
    def identity(self) -> str:
        """What makes two runs the same job (hashed into the default job id)."""

    @abstractmethod
    def describe(self) -> str:
        """A short human description for messages."""

    def check(self) -> None:
        """Fail early, in one line, when the source cannot be read."""
        return None

    def count(self, resume: Resume) -> int | None:
        """Rows left to read from `resume` on, when that is cheap to know."""
        return None

    @abstractmethod
    def chunks(self, chunk_size: int, resume: Resume) -> Iterator[Chunk]:
        """Chunks of at most `chunk_size` rows, in a deterministic order."""

    def close(self) -> None:
        return None

    def bounds(self, rows: int) -> list[Key]:
        """Where blocks of about `rows` rows end, in the order `chunks` reads: the ends
        (included) of all but the last block, which runs to the end."""
        raise ConfigError(f"{self.describe()} cannot be read in blocks")


class FileRows(Source):
    """Rows from a CSV or Parquet file: the key column plus the model's features."""

    lookup = False

    def __init__(self, path: Path, key: str = "id") -> None:
        self.path = path
        self.key = key
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".parquet", ".pq"):
            raise ConfigError(f"{path}: expected a .csv or .parquet file")
        self.parquet = suffix != ".csv"
        if not path.is_file():
            raise ConfigError(f"{path}: no such file")

    def identity(self) -> str:
        # size and mtime too: a file replaced by another of the same name is a new job
        stat = self.path.stat()
        return f"file\0{self.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"

    def describe(self) -> str:
        return str(self.path)

    def check(self) -> None:
        columns = self._parquet().schema_arrow.names if self.parquet else list(
            _pandas().read_csv(self.path, nrows=0).columns)
        if self.key not in columns:
            raise ConfigError(f"{self.path}: no key column {self.key!r} "
                              f"(columns: {', '.join(map(str, columns[:10]))})")

    def count(self, resume: Resume) -> int | None:
        if not self.parquet:
            return None  # a CSV file's row count is only known by reading it
        return max(int(self._parquet().metadata.num_rows) - resume.offset, 0)

    def chunks(self, chunk_size: int, resume: Resume) -> Iterator[Chunk]:
        reader = self._parquet_chunks if self.parquet else self._csv_chunks
        left = None if resume.stop is None else resume.stop - resume.offset
        for columns in reader(chunk_size, resume.offset):
            if left is not None:  # a block's rows end at `stop`
                if left <= 0:
                    return
                columns = {name: values[:left] for name, values in columns.items()}
                left -= len(columns[self.key])
            keys = _python_list(columns.pop(self.key))
            if keys:
                yield Chunk(Frame(keys, columns), keys[-1])

    def bounds(self, rows: int) -> list[Key]:
        if self.parquet:
            total = int(self._parquet().metadata.num_rows)
        else:  # the key column alone, parsed as CSV (a quoted value may hold a newline)
            with _pandas().read_csv(self.path, usecols=[self.key],
                                    chunksize=100_000) as reader:
                total = sum(len(df) for df in reader)
        return list(range(rows, total, rows))

    def _csv_chunks(self, chunk_size: int, offset: int) -> Iterator[dict[str, Any]]:
        pd = _pandas()
        # skiprows keeps the header (line 0) and skips the rows already committed
        skip = range(1, offset + 1) if offset else None
        with pd.read_csv(self.path, chunksize=chunk_size, skiprows=skip) as reader:
            for df in reader:
                yield {str(c): df[c].to_numpy() for c in df.columns}

    def _parquet_chunks(self, chunk_size: int, offset: int) -> Iterator[dict[str, Any]]:
        skip = offset
        for batch in self._parquet().iter_batches(batch_size=chunk_size):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            batch = batch.slice(skip)
            skip = 0
            yield {name: batch.column(i).to_numpy(zero_copy_only=False)
                   for i, name in enumerate(batch.schema.names)}

    def _parquet(self) -> Any:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ConfigError("reading Parquet needs pyarrow: pip install pyarrow") from exc
        return pq.ParquetFile(self.path)


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError as exc:
        raise ConfigError("reading CSV needs pandas: pip install 'modelport[pandas]'") from exc
    return pd


def _python_list(values: Any) -> list[Key]:
    """Keys as plain Python values (numpy int64 is neither JSON nor a SQL parameter)."""
    if isinstance(values, np.ndarray):
        return list(values.tolist())
    return list(values)


def job_id(pipeline: str, source: Source) -> str:
    """The default job id: the pipeline's name and a hash of the pipeline and source."""
    digest = hashlib.sha256(f"{pipeline}\0{source.identity()}".encode()).hexdigest()
    return f"{pipeline}-{digest[:12]}"


def fingerprint(source: Source) -> str:
    return hashlib.sha256(source.identity().encode()).hexdigest()[:12]
