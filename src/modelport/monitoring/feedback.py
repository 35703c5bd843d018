"""Feedback: ground truth for predictions, joined later with the prediction log.

A label names the prediction it judges in one of two ways:

- `{"request_id": "…", "row": 0, "label": …}`: a row of an HTTP request, by the request
  id the server answered with (`X-Request-ID`); `row` (default 0) is the row's place in
  the request's batch;
- `{"pipeline": "NAME", "key": …, "label": …}`: a pipeline's row by its key, whichever
  trigger scored it (HTTP, batch job, stream).

Labels live in `mp_feedback`, in the prediction log's database beside `mp_predictions`,
one row per prediction named: a second label for the same one replaces the first (the
last one written wins), so a corrected label is simply sent again. A label may arrive
before or long after its prediction is logged, and one whose prediction is not in the
log (not sampled, not yet written, or a wrong id) is stored anyway and counted as
`unmatched` in the answer, so a typo is visible rather than silently dropped.
`quality` joins the two tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from modelport.connections.sql import WRITE, UTCDateTime
from modelport.errors import InvalidInput
from modelport.monitoring.logstore import LogStore, predictions
from modelport.monitoring.predlog import key_text

FEEDBACK = "mp_feedback"
REQUEST = "request"
"""The scope of labels given by request id; a pipeline key's scope is `pipeline:NAME`,
the `source` its predictions are logged with."""
MAX_ITEMS = 10_000
"""Most labels in one request (bigger files: `modelport feedback load`, in chunks)."""
MAX_UNMATCHED_SHOWN = 20
_FIELDS = {"request_id", "row", "pipeline", "key", "label"}

metadata = sa.MetaData()
feedback = sa.Table(
    FEEDBACK, metadata,
    sa.Column("scope", sa.String(128), primary_key=True),
    sa.Column("ident", sa.String(256), primary_key=True),
    sa.Column("row_index", sa.Integer, primary_key=True),
    sa.Column("label", sa.JSON, nullable=False),
    sa.Column("ts", UTCDateTime(), nullable=False),
)


@dataclass(frozen=True)
class Label:
    """One label: which prediction (scope, ident, row) and its ground truth."""

    scope: str
    ident: str
    row: int
    label: Any

    @property
    def name(self) -> str:
        if self.scope == REQUEST:
            return f"request {self.ident!r} row {self.row}"
        return f"{self.scope} key {self.ident!r}"


@dataclass
class Receipt:
    """What a submission did: labels stored, and those whose prediction is not (yet) in
    the log."""

    stored: int = 0
    matched: int = 0
    unmatched: int = 0
    unmatched_examples: list[str] = field(default_factory=list)

    def add(self, other: Receipt) -> None:
        self.stored += other.stored
        self.matched += other.matched
        self.unmatched += other.unmatched
        room = MAX_UNMATCHED_SHOWN - len(self.unmatched_examples)
        self.unmatched_examples += other.unmatched_examples[:max(room, 0)]

    def as_json(self) -> dict[str, Any]:
        return {"stored": self.stored, "matched": self.matched, "unmatched": self.unmatched,
                "unmatched_examples": self.unmatched_examples}


# --- reading labels from JSON -------------------------------------------------------------


def parse_body(body: Any) -> list[Label]:
    """Labels from a request body: one object, a list of them, or `{"feedback": [...]}`.
    A bad item raises InvalidInput naming it and its field (`feedback[3].label`)."""
    if isinstance(body, dict) and "feedback" in body:
        extra = sorted(set(body) - {"feedback"})
        if extra:
            raise InvalidInput(f"unknown field(s) {', '.join(map(repr, extra))} beside "
                               "'feedback'")
        items, where = body["feedback"], "feedback"
        if not isinstance(items, list):
            raise InvalidInput("'feedback' must be a list of labels, as in "
                               '{"feedback": [{"request_id": "r1", "label": 1}]}')
    elif isinstance(body, list):
        items, where = body, "feedback"
    else:
        return [parse_item(body, "body")]
    if not items:
        raise InvalidInput(f"{where} is empty: send at least one label")
    if len(items) > MAX_ITEMS:
        raise InvalidInput(f"{where} has {len(items):,} labels, more than {MAX_ITEMS:,} in "
                           "one request: send them in parts")
    return [parse_item(item, f"{where}[{i}]") for i, item in enumerate(items)]


def parse_item(item: Any, where: str) -> Label:
    """One label object; errors name `where` and the field."""
    if not isinstance(item, dict):
        raise InvalidInput(f"{where}: expected an object such as "
                           '{"request_id": "r1", "label": 1}, got '
                           f"{type(item).__name__}")
    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        raise InvalidInput(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
                           f"expected {', '.join(sorted(_FIELDS))}")
    if "label" not in item or item["label"] is None:
        raise InvalidInput(f"{where}.label is required: the ground truth (a class, a "
                           "number, or a list of relevant items)")
    label = item["label"]
    if isinstance(label, dict):
        raise InvalidInput(f"{where}.label must be a class, a number or a list, not an "
                           "object")
    if "request_id" in item:
        return _by_request(item, where, label)
    if "pipeline" in item or "key" in item:
        return _by_key(item, where, label)
    raise InvalidInput(f"{where}: name the prediction with request_id (and row) or with "
                       "pipeline and key")


def _by_request(item: dict[str, Any], where: str, label: Any) -> Label:
    if "pipeline" in item or "key" in item:
        raise InvalidInput(f"{where}: give either request_id (and row) or pipeline and "
                           "key, not both")
    rid = item["request_id"]
    if not isinstance(rid, str) or not rid or len(rid) > 128:
        raise InvalidInput(f"{where}.request_id must be a non-empty string of at most "
                           "128 characters")
    row = item.get("row", 0)
    if not isinstance(row, int) or isinstance(row, bool) or row < 0:
        raise InvalidInput(f"{where}.row must be an integer >= 0 (the row's place in "
                           "the request)")
    return Label(REQUEST, rid, row, label)


def _by_key(item: dict[str, Any], where: str, label: Any) -> Label:
    if "row" in item:
        raise InvalidInput(f"{where}.row applies to request_id only: a key names one row")
    pipeline, key = item.get("pipeline"), item.get("key")
    if not isinstance(pipeline, str) or not pipeline:
        raise InvalidInput(f"{where}.pipeline is required with key: the pipeline's name")
    if key is None or isinstance(key, dict | bool):
        raise InvalidInput(f"{where}.key is required with pipeline: a string, a number "
                           "or a list (a key of several columns)")
    ident = key_text(tuple(key) if isinstance(key, list) else key)
    if len(ident) > 256:
        raise InvalidInput(f"{where}.key is longer than 256 characters")
    return Label(f"pipeline:{pipeline}", ident, 0, label)


# --- the table ----------------------------------------------------------------------------


class FeedbackStore:
    """`mp_feedback` in the prediction log's database (a LogStore's engine)."""

    def __init__(self, log: LogStore) -> None:
        self.log = log
        self.ready = False

    @classmethod
    def open(cls, url: str) -> FeedbackStore:
        return cls(LogStore(url))

    def close(self) -> None:
        self.log.close()

    def ensure(self) -> None:
        if self.ready:
            return
        self.log.ensure()  # mp_predictions with its feedback columns, for the join
        with self.log.errors():
            try:
                metadata.create_all(self.log.engine, checkfirst=True)
            except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
                metadata.create_all(self.log.engine, checkfirst=True)  # a replica raced us
        self.ready = True

    def submit(self, labels: Iterable[Label], now: datetime | None = None) -> Receipt:
        """Store `labels` (last wins, within the call and over earlier ones) in one
        transaction, and say how many name a prediction in the log."""
        self.ensure()
        latest = {(lb.scope, lb.ident, lb.row): lb for lb in labels}  # last wins
        if not latest:
            return Receipt()
        ts = now or datetime.now(UTC)
        rows = [{"scope": s, "ident": i, "row_index": r, "label": lb.label, "ts": ts}
                for (s, i, r), lb in latest.items()]
        with self.log.errors(), self.log.engine.connect() as conn:
            conn = conn.execution_options(**{WRITE: True})
            with conn.begin():
                _upsert(conn, rows)
            found = _found(conn, list(latest.values()))
        missing = [lb for key, lb in latest.items() if key not in found]
        return Receipt(len(rows), len(rows) - len(missing), len(missing),
                       [lb.name for lb in missing[:MAX_UNMATCHED_SHOWN]])

    def count(self) -> int:
        self.ensure()
        with self.log.errors(), self.log.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(feedback))
                       .scalar_one())


def _found(conn: Connection, labels: list[Label]) -> set[tuple[str, str, int]]:
    """Which labels name a logged prediction (one query per chunk, per kind)."""
    found: set[tuple[str, str, int]] = set()
    by_request = [lb for lb in labels if lb.scope == REQUEST]
    by_key = [lb for lb in labels if lb.scope != REQUEST]
    p = predictions.c
    for chunk in _chunks(by_request, 500):
        query = sa.select(p.request_id, p.row_index).where(
            p.request_id.in_({lb.ident for lb in chunk})).distinct()
        found |= {(REQUEST, rid, row) for rid, row in conn.execute(query)}
    for chunk in _chunks(by_key, 500):
        query = sa.select(p.source, p.row_key).where(
            p.source.in_({lb.scope for lb in chunk}),
            p.row_key.in_({lb.ident for lb in chunk})).distinct()
        found |= {(source, key, 0) for source, key in conn.execute(query)}
    return found


def _chunks(items: list[Label], size: int) -> Iterator[list[Label]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        insert = (sqlite.insert if name == "sqlite" else postgresql.insert)(feedback)
        conn.execute(insert.on_conflict_do_update(
            index_elements=["scope", "ident", "row_index"],
            set_={"label": insert.excluded.label, "ts": insert.excluded.ts}), rows)
        return
    # other databases: replace (delete, then insert) inside the caller's transaction
    for row in rows:
        conn.execute(sa.delete(feedback).where(
            feedback.c.scope == row["scope"], feedback.c.ident == row["ident"],
            feedback.c.row_index == row["row_index"]))
    conn.execute(feedback.insert(), rows)
