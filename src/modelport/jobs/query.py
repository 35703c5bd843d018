"""A batch job's input from a SQL query: of keys (each chunk looked up by the pipeline's
retriever) or of rows (the key and the features).

It is read in key order, so a job resumes exactly after the last committed key, and a
chunk never ends inside one key's rows. PostgreSQL streams by binary COPY (a cursor
where a column is not a number), other databases by a server-side cursor, SQLite one
short query per chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from modelport.connections.sql import driver_errors, make_engine, sql_error
from modelport.errors import ConfigError
from modelport.jobs.sources import Chunk, Resume, Source
from modelport.pipeline import Frame, Key, pgcopy
from modelport.pipeline.columns import column


class KeyQuery(Source):
    """A SQL query's rows: its first column is the key. A query of that column alone
    (`SELECT id FROM patients WHERE …`) lists keys for the pipeline's retriever to look
    up; a query of more columns (`SELECT * FROM patients WHERE …`) carries the rows
    themselves, so nothing is looked up.

    Keys come distinct, both kinds in key order (what makes resuming exact). On
    PostgreSQL, rows of numbers stream as one binary COPY cut into columns by numpy;
    otherwise through a server-side cursor, or on SQLite one short query per chunk."""

    lookup = True

    def __init__(self, url: str, query: str) -> None:
        self.url = url
        self.query = query.strip().rstrip(";").strip()
        if not self.query:
            raise ConfigError("the keys query is empty")
        self._engine: Engine | None = None
        self._columns: list[str] = []

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    def identity(self) -> str:
        return f"query\0{sa.make_url(self.url).render_as_string(hide_password=True)}\0{self.query}"

    def describe(self) -> str:
        what = "keys query" if self.lookup else "rows query"
        return f"{what} on {sa.make_url(self.url).render_as_string(hide_password=True)}"

    def check(self) -> None:
        # a probe that returns no rows: bad SQL or a missing table fails here, in one line
        probe = sa.text(f"SELECT * FROM ({self.query}) AS mp_probe LIMIT 0")
        try:
            with self.engine.connect() as conn:
                columns = list(map(str, conn.execute(probe).keys()))
        except SQLAlchemyError as exc:
            raise ConfigError(str(sql_error("keys query", exc))) from exc
        if not columns:
            raise ConfigError("keys query returns no columns")
        self._columns = columns
        self.lookup = len(columns) == 1

    def __getstate__(self) -> dict[str, Any]:
        # shipped to the workers of a job run in blocks: each opens its own engine
        return {**self.__dict__, "_engine": None}

    def _ordered(self, after: str | None, select: str | None = None,
                 until: str | None = None) -> str:
        """The query in key order, after the key `after` and up to `until` (SQL) when
        given; `select` replaces the ordering with an aggregate over it (a count)."""
        if not self._columns:
            self.check()
        col = self.engine.dialect.identifier_preparer.quote(self._columns[0])
        conditions = [f"mp_q.{col} > {after}"] if after else []
        conditions += [f"mp_q.{col} <= {until}"] if until else []
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        if self.lookup:
            inner = f"SELECT DISTINCT mp_q.{col} AS mp_key FROM ({self.query}) AS mp_q{where}"
            order = " ORDER BY mp_key"
        else:  # a key listed twice is scored twice: the writer's upsert keeps one row
            inner = f"SELECT * FROM ({self.query}) AS mp_q{where}"
            order = f" ORDER BY mp_q.{col}"
        return f"SELECT {select} FROM ({inner}) AS mp_k" if select else inner + order

    def count(self, resume: Resume) -> int | None:
        after, until, params = _range(resume)
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(sa.text(self._ordered(after, "count(*)", until)),
                                        params).scalar_one())
        except SQLAlchemyError as exc:
            raise sql_error("counting the keys", exc) from exc

    def bounds(self, rows: int) -> list[Key]:
        # every rows-th key in key order (one scan of the keys, numbered by the database)
        if not self._columns:
            self.check()
        col = self.engine.dialect.identifier_preparer.quote(self._columns[0])
        distinct = "DISTINCT " if self.lookup else ""
        keys = f"SELECT {distinct}mp_q.{col} AS mp_key FROM ({self.query}) AS mp_q"
        numbered = (f"SELECT mp_key, row_number() OVER (ORDER BY mp_key) AS mp_n, "
                    f"count(*) OVER () AS mp_all FROM ({keys}) AS mp_k")
        # not the last key: the block after it would be empty
        sql = f"SELECT mp_key FROM ({numbered}) AS mp_b WHERE mp_n % {int(rows)} = 0 " \
              "AND mp_n < mp_all ORDER BY mp_key"
        try:
            with self.engine.connect() as conn:
                found = [row[0] for row in conn.execute(sa.text(sql))]
        except SQLAlchemyError as exc:
            raise sql_error("planning the blocks of the keys", exc) from exc
        # a key listed twice (a rows query) ends one block, not two
        return [k for i, k in enumerate(found) if i == 0 or k != found[i - 1]]

    def chunks(self, chunk_size: int, resume: Resume) -> Iterator[Chunk]:
        if self.engine.dialect.name == "sqlite":
            yield from self._pages(chunk_size, resume)
            return
        try:
            with self.engine.connect() as conn:
                copied = self._copy(conn, chunk_size, resume) \
                    if conn.dialect.name == "postgresql" else None
                chunks = copied or self._cursor(conn, chunk_size, resume)
                # a keys query is DISTINCT; a rows query may list a key more than once
                yield from chunks if self.lookup else _whole_keys(chunks)
        except SQLAlchemyError as exc:
            raise sql_error("reading the keys", exc) from exc

    def _copy(self, conn: Connection, chunk_size: int, resume: Resume
              ) -> Iterator[Chunk] | None:
        """PostgreSQL: the rows as one binary COPY cut into columns; None when a column
        is not a number (the cursor reads those)."""
        raw: Any = conn.connection.driver_connection
        after = None if resume.last_key is None else _literal(resume.last_key, raw)
        until = None if resume.until is None else _literal(resume.until, raw)
        query = self._ordered(after, until=until)
        with driver_errors(conn, raw), raw.cursor() as cursor:
            oids = [oid for _, oid in pgcopy.describe(cursor, query)]
        return self._copied(conn, query, oids, chunk_size) if pgcopy.readable(oids) else None

    def _copied(self, conn: Connection, query: str, oids: list[int], chunk_size: int
                ) -> Iterator[Chunk]:
        raw: Any = conn.connection.driver_connection
        with driver_errors(conn, raw), raw.cursor() as cursor:
            for arrays in pgcopy.copy_out(cursor, query, oids, chunk_size, exact=[0]):
                yield self._chunk(arrays[0].tolist(), arrays[1:])

    def _cursor(self, conn: Connection, chunk_size: int, resume: Resume) -> Iterator[Chunk]:
        # `yield_per` makes a server-side cursor (psycopg: a named cursor): the
        # database sends rows as they are fetched, never the whole result at once
        after, until, params = _range(resume)
        result = conn.execution_options(yield_per=chunk_size).execute(
            sa.text(self._ordered(after, until=until)), params)
        for rows in result.partitions(chunk_size):
            yield self._rows_chunk(rows)

    def _rows_chunk(self, rows: Sequence[Sequence[Any]]) -> Chunk:
        # keys as the driver gave them (a NUMERIC key stays a Decimal, NULL None)
        keys, *others = zip(*rows, strict=True)
        return self._chunk(list(keys), [column(list(c)) for c in others])

    def _chunk(self, keys: list[Key], columns: list[np.ndarray]) -> Chunk:
        named = dict(zip(self._columns[1:], columns, strict=True)) if not self.lookup else {}
        return Chunk(Frame(keys, named), keys[-1])

    def _pages(self, chunk_size: int, resume: Resume) -> Iterator[Chunk]:
        # SQLite: one short query per chunk instead of a cursor held open for the whole
        # job, whose read lock would block the job's own writes to the same file
        last = resume.last_key
        while True:
            # a row past the page tells whether the page's last key goes on after it
            rows = self._page(Resume(last, until=resume.until), chunk_size + 1)
            if not rows:
                return
            more, page = len(rows) > chunk_size, rows[:chunk_size]
            if more and rows[chunk_size][0] == page[-1][0]:
                # the page ends inside a key's rows: it ends before them instead (the
                # next page reads them all), or, all of one key, reads all of that key
                cut = _run_start([row[0] for row in page])
                page = page[:cut] if cut else \
                    self._page(Resume(last, until=page[-1][0]), None)
            chunk = self._rows_chunk(page)
            last = chunk.last_key
            yield chunk
            if not more:
                return

    def _page(self, resume: Resume, limit: int | None) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                after, until, params = _range(resume)
                query = self._ordered(after, until=until)
                if limit is None:
                    return list(conn.execute(sa.text(query), params))
                return list(conn.execute(sa.text(f"{query} LIMIT :n"), {**params, "n": limit}))
        except SQLAlchemyError as exc:
            raise sql_error("reading the keys", exc) from exc

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _whole_keys(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """Chunks that never end inside a run of one key: a job's checkpoint is a chunk's
    last key, and resuming after it must not skip that key's other rows. A chunk takes
    the next one's leading rows of its last key (one chunk is held back to see them)."""
    held: Chunk | None = None
    for chunk in chunks:
        if held is None:
            held = chunk
            continue
        keys = chunk.frame.keys
        run = next((i for i, k in enumerate(keys) if k != held.last_key), len(keys))
        if run:
            held = Chunk(_joined(held.frame, chunk.frame.take(range(run))), held.last_key)
            if run == len(keys):
                continue
            chunk = Chunk(chunk.frame.take(range(run, len(keys))), chunk.last_key)
        yield held
        held = chunk
    if held is not None:
        yield held


def _joined(a: Frame, b: Frame) -> Frame:
    return Frame(a.keys + b.keys,
                 {n: np.concatenate([a.columns[n], b.columns[n]]) for n in a.columns})


def _run_start(keys: Sequence[Key]) -> int:
    """Where the run of the last key at the end of `keys` starts."""
    i = len(keys) - 1
    while i > 0 and keys[i - 1] == keys[-1]:
        i -= 1
    return i


def _range(resume: Resume) -> tuple[str | None, str | None, dict[str, Any]]:
    """The bounds of a key range as SQL parameters, with their values."""
    params = {name: value for name, value in (("after", resume.last_key),
                                               ("until", resume.until)) if value is not None}
    return (":after" if "after" in params else None, ":until" if "until" in params else None,
            params)


def _literal(value: Any, raw: Any) -> str:
    """A key as SQL text (COPY takes no parameters), quoted by psycopg."""
    from psycopg import sql

    return str(sql.Literal(value).as_string(raw))
