"""The prediction log's tables, and the SQL that writes and reads them.

Two tables, created on first use in the log's database (the registry's by default):

- `mp_predictions`: one row per *sampled* prediction row: when, which model version,
  which trigger (`source`), the call's latency, the row's inputs and outputs as JSON,
  the request id (to find the access log line of an odd prediction), and which row
  of the call it was (`row_index`; `row_key`, the pipeline key, for pipeline calls):
  feedback (`monitoring.feedback`) joins ground truth to a row by these.
- `mp_traffic`: every call counted (not sampled) per minute, model, version and
  source: calls, rows, errors, and latencies in fixed buckets, so a report's request
  counts are exact and its percentiles hold for all calls, not just the sampled ones.
  Replicas add to the same rows (an upsert), so one row per minute holds them all.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from modelport.connections.sql import (
    WRITE,
    UTCDateTime,
    display,
    make_store_engine,
    parse_url,
    sql_errors,
)

PREDICTIONS = "mp_predictions"
TRAFFIC = "mp_traffic"
# Upper bounds (ms) of the latency buckets; the last bucket takes everything above.
# A 1-2-5 series: percentiles read from it are within one bucket of the truth.
LATENCY_EDGES_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)
BUCKETS = [f"ms_le_{str(e).replace('.', '_')}" for e in LATENCY_EDGES_MS] + ["ms_le_inf"]
KEY = ("minute", "model", "version", "source")
COUNTS = ("calls", "rows", "errors", *BUCKETS)

metadata = sa.MetaData()
# SQLite autoincrements only an INTEGER PRIMARY KEY (a BIGINT one stays NULL)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

predictions = sa.Table(
    PREDICTIONS, metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("ts", UTCDateTime(), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("source", sa.String(128), nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("outputs", sa.JSON, nullable=False),
    sa.Column("request_id", sa.String(128)),
    sa.Column("row_index", sa.Integer),
    sa.Column("row_key", sa.String(256)),
    sa.Index("ix_mp_predictions_model_ts", "model", "ts"),
    sa.Index("ix_mp_predictions_request", "request_id", "row_index"),
    sa.Index("ix_mp_predictions_key", "source", "row_key"),
)
# Columns added after the table first shipped: `ensure` adds them to an older table.
ADDED_COLUMNS = ("row_index", "row_key")

traffic = sa.Table(
    TRAFFIC, metadata,
    sa.Column("minute", UTCDateTime(), primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("source", sa.String(128), primary_key=True),
    *(sa.Column(name, sa.BigInteger, nullable=False, server_default="0") for name in COUNTS),
    sa.Column("latency_ms_sum", sa.Float, nullable=False, server_default="0"),
)


@dataclass
class Count:
    """One minute of one model version's traffic from one source."""

    calls: int = 0
    rows: int = 0
    errors: int = 0
    latency_ms_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))

    def add(self, rows: int, latency_ms: float, ok: bool) -> None:
        self.calls += 1
        self.rows += rows
        self.errors += not ok
        self.latency_ms_sum += latency_ms
        self.buckets[bucket(latency_ms)] += 1

    def merge(self, other: Count) -> None:
        self.calls += other.calls
        self.rows += other.rows
        self.errors += other.errors
        self.latency_ms_sum += other.latency_ms_sum
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]


TrafficKey = tuple[int, str, int, str]
"""(minute as Unix seconds, model, version, source)"""


def bucket(latency_ms: float) -> int:
    """The index of the first edge at or above `latency_ms` (past the last: its count)."""
    return bisect.bisect_left(LATENCY_EDGES_MS, latency_ms)


def percentile(buckets: Sequence[int], q: float) -> float | None:
    """The q-quantile (0..1) of latencies counted in `buckets`, interpolated
    geometrically inside its bucket (the buckets are spaced geometrically)."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            low = LATENCY_EDGES_MS[i - 1] if i else LATENCY_EDGES_MS[0] / 2
            high = LATENCY_EDGES_MS[i] if i < len(LATENCY_EDGES_MS) else low * 2
            share = (rank - seen) / n
            return float(low * math.pow(high / low, share))
        seen += n
    return float(LATENCY_EDGES_MS[-1])


class LogStore:
    """The prediction log's database: create the tables, write a flush, read windows."""

    def __init__(self, url: str) -> None:
        self.where = display(parse_url(url))
        # orjson writes the sampled rows' JSON far faster than json.dumps; a flush
        # runs in a thread but holds the GIL while it serializes, and the event loop
        # waits on it (a busy server's p99 rises at each flush); it reads JSON back
        # several times faster than json.loads too (live quality and reports decode up
        # to 100,000 rows per computation)
        self.engine: Engine = make_store_engine(url, json_serializer=_json_text,
                                                json_deserializer=_json_value)
        self.ready = False

    def close(self) -> None:
        self.engine.dispose()

    def errors(self) -> contextlib.AbstractContextManager[None]:
        """Database errors as one `ModelportError` naming the log's database (for
        every reader of these tables: feedback and live quality too)."""
        return sql_errors(f"prediction log database {self.where}")

    def ensure(self) -> None:
        """Create the tables if they are missing (once per process)."""
        if self.ready:
            return
        with self.errors():
            try:
                metadata.create_all(self.engine, checkfirst=True)
            except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
                # another replica created them between our check and our CREATE
                metadata.create_all(self.engine, checkfirst=True)
            _migrate(self.engine)
        self.ready = True

    def write(self, rows: list[dict[str, Any]], counts: dict[TrafficKey, Count]) -> None:
        """One transaction: the sampled rows (executemany) and the traffic upserts."""
        self.ensure()
        with self.errors(), self.engine.connect() as conn:
            conn = conn.execution_options(**{WRITE: True})  # SQLite: BEGIN IMMEDIATE
            with conn.begin():
                if rows:
                    conn.execute(predictions.insert(), rows)
                if counts:
                    _upsert(conn, [_traffic_row(k, c) for k, c in counts.items()])

    def traffic(self, since: datetime, until: datetime,
                model: str | None = None) -> list[tuple[datetime, str, int, str, Count]]:
        """Traffic rows in [since, until), oldest first."""
        self.ensure()
        query = sa.select(traffic).where(traffic.c.minute >= since, traffic.c.minute < until)
        if model is not None:
            query = query.where(traffic.c.model == model)
        with self.errors(), self.engine.connect() as conn:
            result = conn.execute(query.order_by(traffic.c.minute)).mappings().all()
        return [(r["minute"], r["model"], r["version"], r["source"],
                 Count(r["calls"], r["rows"], r["errors"], r["latency_ms_sum"],
                       [r[b] for b in BUCKETS])) for r in result]

    def samples(self, model: str, since: datetime, until: datetime,
                limit: int, version: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """Sampled rows of `model` (of one `version`, if given) in [since, until),
        oldest first, and how many there are: at most about `limit` are read, spread
        over the window (every k-th row by id) rather than the newest, so every reader
        of one window reads the same rows."""
        self.ensure()
        where: tuple[Any, ...] = (predictions.c.model == model, predictions.c.ts >= since,
                                  predictions.c.ts < until)
        if version is not None:
            where = (*where, predictions.c.version == version)
        with self.errors(), self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).where(*where)).scalar_one()
            query = sa.select(predictions).where(*where)
            if total > limit:
                query = query.where(predictions.c.id % math.ceil(total / limit) == 0)
            rows = conn.execute(query.order_by(predictions.c.id)).mappings()
            return [dict(r) for r in rows], int(total)


def _migrate(engine: Engine) -> None:
    """Bring a table made by an older modelport up to date: the feedback columns and
    their indexes (nullable, so old rows are simply not joinable)."""
    have = {c["name"] for c in sa.inspect(engine).get_columns(PREDICTIONS)}
    missing = [predictions.c[name] for name in ADDED_COLUMNS if name not in have]
    if not missing:
        return
    for column in missing:  # a transaction each: PostgreSQL aborts one on a failure
        kind = column.type.compile(dialect=engine.dialect)
        # another replica may have added it first (a duplicate column)
        with contextlib.suppress(sa_exc.OperationalError, sa_exc.ProgrammingError), \
                engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {PREDICTIONS} ADD COLUMN "
                                 f"{column.name} {kind}"))
    for index in predictions.indexes:
        if set(index.columns.keys()) & set(ADDED_COLUMNS):
            with contextlib.suppress(sa_exc.OperationalError, sa_exc.ProgrammingError):
                index.create(engine, checkfirst=True)


def _traffic_row(key: TrafficKey, count: Count) -> dict[str, Any]:
    minute, model, version, source = key
    return {"minute": datetime.fromtimestamp(minute, UTC), "model": model,
            "version": version, "source": source, "calls": count.calls, "rows": count.rows,
            "errors": count.errors, "latency_ms_sum": count.latency_ms_sum,
            **dict(zip(BUCKETS, count.buckets, strict=True))}


def _upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    added = (*COUNTS, "latency_ms_sum")
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        insert = (sqlite.insert if name == "sqlite" else postgresql.insert)(traffic)
        conn.execute(insert.on_conflict_do_update(
            index_elements=list(KEY),
            set_={c: traffic.c[c] + insert.excluded[c] for c in added}), rows)
        return
    # other databases: add to the row, or create it (a race fails the transaction,
    # whose counts the log keeps for its next flush)
    for row in rows:
        match = sa.and_(*(traffic.c[k] == row[k] for k in KEY))
        done = conn.execute(sa.update(traffic).where(match).values(
            {c: traffic.c[c] + row[c] for c in added}))
        if done.rowcount == 0:
            conn.execute(traffic.insert(), row)


def _json_value(raw: Any) -> Any:
    # SQLite gives a JSON number back as a number (the JSON column's NUMERIC affinity)
    return orjson.loads(raw) if isinstance(raw, str | bytes) else raw


def _json_text(value: Any) -> str:
    # NaN and infinities were made null already (datatypes.jsonable), as JSON has neither
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
