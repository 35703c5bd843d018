"""The system's SQL tables, filling them from a generated data set, and the reads the
web page and the events service make.

Tables (each name starts with the system's prefix): `catalog` (tracks), `users`,
`listens` (every listen: the events service appends, the trainer reads), `impressions`
(what the recommender showed, written by its pipeline), and in embedded mode
`history` and `topk` (in Redis in full mode).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd
import sqlalchemy as sa
from modelport.pipeline import make_engine

from music.system import HISTORY_KEEP, System

CHUNK = 50_000  # rows per insert statement batch while loading
RECOUNT_GENRE_BELOW = 50
"""A listener with at most this many plays gets their top genre recounted on a play."""


def tables(system: System) -> dict[str, sa.Table]:
    meta = sa.MetaData()
    t = system.table
    out = {
        "catalog": sa.Table(
            t("catalog"), meta,
            sa.Column("track", sa.String(32), primary_key=True),
            sa.Column("title", sa.Text, nullable=False),
            sa.Column("artist", sa.Text, nullable=False),
            sa.Column("genre", sa.String(64), nullable=False),
            sa.Column("duration_s", sa.Integer)),
        "users": sa.Table(
            t("users"), meta,
            sa.Column("user_id", sa.String(64), primary_key=True),
            sa.Column("top_genre", sa.String(64)),
            sa.Column("listens", sa.Integer)),
        "listens": sa.Table(
            t("listens"), meta,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("user_id", sa.String(64), nullable=False),
            sa.Column("track", sa.String(32), nullable=False),
            sa.Column("ts", sa.Double, nullable=False),
            sa.Index(f"{t('listens')}_user_ts", "user_id", "ts")),
        "impressions": sa.Table(
            t("impressions"), meta,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("user_id", sa.String(64), nullable=False, index=True),
            sa.Column("ts", sa.Double, nullable=False),
            sa.Column("source", sa.String(16), nullable=False),
            sa.Column("model_version", sa.BigInteger),
            sa.Column("cold", sa.Boolean),
            sa.Column("items", sa.Text, nullable=False)),
    }
    if system.redis_url is None:
        out["history"] = sa.Table(
            t("history"), meta,
            sa.Column("user_id", sa.String(64), primary_key=True),
            sa.Column("history", sa.Text, nullable=False))
        out["topk"] = sa.Table(
            t("topk"), meta,
            sa.Column("user_id", sa.String(64), primary_key=True),
            sa.Column("items", sa.Text, nullable=False),
            sa.Column("scores", sa.Text, nullable=False),
            sa.Column("model_version", sa.BigInteger),
            sa.Column("computed_at", sa.Double))
    return out


@dataclass
class Track:
    track: str
    title: str
    artist: str
    genre: str

    def as_dict(self) -> dict[str, str]:
        return {"track": self.track, "title": self.title, "artist": self.artist,
                "genre": self.genre}


class Store:
    """The SQL side of the system (blocking calls: services run them in threads)."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.engine = make_engine(system.database)
        self.t = tables(system)

    def close(self) -> None:
        self.engine.dispose()

    def create(self) -> None:
        if self.engine.dialect.name == "sqlite":
            self.system.data_dir.mkdir(parents=True, exist_ok=True)
        self.t["catalog"].metadata.create_all(self.engine)

    def drop(self) -> None:
        self.t["catalog"].metadata.drop_all(self.engine)

    def count(self, name: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.t[name]))
                       .scalar_one())

    # --- loading a data set ---------------------------------------------------------

    def load(self, catalog: pd.DataFrame, users: pd.DataFrame, listens: pd.DataFrame) -> None:
        """Fill catalogue, users and listens (tables must be empty)."""
        self._insert("catalog", pd.DataFrame({
            "track": catalog["item"].astype(str), "title": catalog["title"],
            "artist": catalog["artist"], "genre": catalog["genre"],
            "duration_s": catalog["duration_s"].astype(int)}))
        self._insert("users", pd.DataFrame({
            "user_id": users["user"].astype(str), "top_genre": users["top_genre"],
            "listens": users["listens"].astype(int)}))
        self._insert("listens", listens_frame(listens))

    def _insert(self, name: str, frame: pd.DataFrame) -> None:
        table = self.t[name]
        columns = list(frame.columns)
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                _copy(conn, table, columns, frame)
                return
            # the driver's executemany with tuples: several times faster than Core
            # inserts of dicts, for a million listens
            quote = conn.dialect.identifier_preparer.quote
            sql = (f"INSERT INTO {conn.dialect.identifier_preparer.format_table(table)} "
                   f"({', '.join(quote(c) for c in columns)}) "
                   f"VALUES ({', '.join(['?'] * len(columns))})")
            rows = list(frame.itertuples(index=False, name=None))
            for start in range(0, len(rows), CHUNK):
                conn.exec_driver_sql(sql, rows[start:start + CHUNK])

    def write_histories(self, histories: dict[str, list[list[Any]]]) -> None:
        """Embedded mode: replace the `history` table's rows."""
        table = self.t["history"]
        rows = [{"user_id": u, "history": orjson.dumps(h).decode()} for u, h in histories.items()]
        with self.engine.begin() as conn:
            conn.execute(table.delete())
            for start in range(0, len(rows), CHUNK):
                conn.execute(table.insert(), rows[start:start + CHUNK])

    # --- reads and writes of the services ---------------------------------------------

    def catalog(self) -> dict[str, Track]:
        with self.engine.connect() as conn:
            c = self.t["catalog"].c
            rows = conn.execute(sa.select(c.track, c.title, c.artist, c.genre)).all()
        return {r.track: Track(r.track, r.title, r.artist, r.genre) for r in rows}

    def add_listen(self, listen_id: str, user: str, track: str, ts: float) -> bool:
        """Append a listen and count it in the user's row (a new user gets one);
        False when that id was stored already (a client's retry)."""
        table = self.t["listens"]
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(table.c.id).where(table.c.id == listen_id)).first()
            if exists is not None:
                return False
            conn.execute(table.insert().values(id=listen_id, user_id=user, track=track, ts=ts))
            self._count_listen(conn, user)
        return True

    def _count_listen(self, conn: sa.Connection, user: str) -> None:
        """The listener list shows plays and top genre from `users`: one more play, and
        for a listener with few plays (a new one), the genre they now play most."""
        users, listens, catalog = self.t["users"], self.t["listens"], self.t["catalog"]
        from sqlalchemy.dialects import postgresql, sqlite

        insert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        # one statement: two first listens of a new user at once both count
        upsert = insert(users).values(user_id=user, listens=1)
        conn.execute(upsert.on_conflict_do_update(
            index_elements=[users.c.user_id], set_={"listens": users.c.listens + 1}))
        plays = conn.execute(sa.select(users.c.listens).where(users.c.user_id == user)) \
            .scalar_one()
        if plays > RECOUNT_GENRE_BELOW:
            return  # one play hardly moves a long history's top genre; skip the scan
        count = sa.func.count().label("n")
        top = conn.execute(
            sa.select(catalog.c.genre, count)
            .select_from(listens.join(catalog, catalog.c.track == listens.c.track))
            .where(listens.c.user_id == user)
            .group_by(catalog.c.genre).order_by(count.desc(), catalog.c.genre).limit(1)
        ).first()
        if top is not None:
            conn.execute(users.update().where(users.c.user_id == user)
                         .values(top_genre=top.genre))

    def users(self, query: str = "", limit: int = 20) -> list[dict[str, Any]]:
        """Users whose id starts with `query`, the most active first."""
        table = self.t["users"]
        statement = sa.select(table).order_by(table.c.listens.desc(), table.c.user_id) \
            .limit(limit)
        if query:
            statement = statement.where(table.c.user_id.startswith(query, autoescape=True))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(statement)]

    def listen_count(self, user: str) -> int:
        table = self.t["listens"]
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(table.c.user_id == user))
                       .scalar_one())

    def impressions(self, user: str, limit: int = 5) -> list[dict[str, Any]]:
        table = self.t["impressions"]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table).where(table.c.user_id == user)
                                .order_by(table.c.ts.desc()).limit(limit)).all()
        return [{**r._mapping, "items": orjson.loads(r.items)} for r in rows]


def listens_frame(listens: pd.DataFrame) -> pd.DataFrame:
    """The generator's listens as rows of the listens table, ids `h<row>` (historic)."""
    ts = pd.to_datetime(listens["ts"], utc=True)
    return pd.DataFrame({
        "id": [f"h{i}" for i in range(len(listens))],
        "user_id": listens["user"].astype(str).to_numpy(),
        "track": listens["item"].astype(str).to_numpy(),
        # epoch seconds, whatever unit pandas keeps the times in
        "ts": ((ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(),
    })


def histories_from(listens: pd.DataFrame, keep: int = HISTORY_KEEP) -> dict[str, list[list[Any]]]:
    """Rows of the listens table → each user's newest `keep` entries [id, track, ts]."""
    ordered = listens.sort_values(["user_id", "ts", "id"], ascending=[True, False, False],
                                  kind="stable", ignore_index=True)
    ordered = ordered[ordered.groupby("user_id", sort=False).cumcount() < keep]
    users = ordered["user_id"].to_numpy()
    rows = list(zip(ordered["id"].tolist(), ordered["track"].tolist(),
                    ordered["ts"].astype(float).tolist(), strict=True))
    out: dict[str, list[list[Any]]] = {}
    # users are contiguous after the sort: slice at the boundaries
    starts = [0, *(i for i in range(1, len(users)) if users[i] != users[i - 1]), len(users)]
    for a, b in itertools.pairwise(starts):
        out[str(users[a])] = [list(r) for r in rows[a:b]]
    return out


def _copy(conn: sa.Connection, table: sa.Table, columns: Sequence[str],
          frame: pd.DataFrame) -> None:
    """PostgreSQL: COPY, many times faster than INSERTs for a million listens."""
    quote = conn.dialect.identifier_preparer.quote
    target = conn.dialect.identifier_preparer.format_table(table)
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(
            f"COPY {target} ({', '.join(quote(c) for c in columns)}) FROM STDIN") as copy:
        for row in frame.itertuples(index=False, name=None):
            copy.write_row(row)


def now() -> float:
    return time.time()
