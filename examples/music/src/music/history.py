"""Users' recent listens: the history store, how listens fold into it, and how it
becomes the model's `history` tensor.

A history is a list of entries `[listen_id, track, ts]`, newest first, at most
`HISTORY_KEEP` long. Folding listens in is a merge by listen id, so a listen delivered
twice (the stream is at-least-once) is kept once, and listens arriving out of order
still end up sorted by time. The SQL store holds the list as JSON text in
`<prefix>history(user_id, history)`; the Redis store as a JSON document
`{"history": [...]}` under `<prefix>history:<user>`, merged by a Lua script so that
two workers folding listens of one user never lose one.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa
from modelport import InvalidInput, Service
from modelport.pipeline import Frame, RedisWriter, SqlComponent, Writer

from music.system import HISTORY_KEEP

Entry = list[Any]
"""[listen_id, track, ts]"""


def entries(cell: Any) -> list[Entry]:
    """A stored history (JSON text, a list, or nothing for a new user) as entries."""
    if cell is None or (isinstance(cell, float) and cell != cell):
        return []
    if isinstance(cell, str | bytes):
        cell = orjson.loads(cell) if cell else []
    if isinstance(cell, dict):  # a Redis document read whole
        cell = cell.get("history", [])
    # parsed JSON holds lists already: copying 200 of them on every request is waste
    return [e if type(e) is list else list(e) for e in cell]


def merge(old: Iterable[Entry], new: Iterable[Entry], keep: int = HISTORY_KEEP) -> list[Entry]:
    """Newest first, one entry per listen id, at most `keep`."""
    by_id: dict[str, Entry] = {}
    for entry in (*old, *new):
        by_id.setdefault(str(entry[0]), entry)
    ordered = sorted(by_id.values(), key=lambda e: (float(e[2]), str(e[0])), reverse=True)
    return ordered[:keep]


def listens_by_user(frame: Frame) -> dict[str, list[Entry]]:
    """A frame of listens (keys: listen ids; columns user, track, ts) grouped by user."""
    for column in ("user", "track", "ts"):
        if column not in frame.columns:
            raise InvalidInput(f"a listen needs 'user', 'track' and 'ts'; '{column}' is missing")
    grouped: dict[str, list[Entry]] = defaultdict(list)
    for key, user, track, ts in zip(frame.keys, frame.columns["user"], frame.columns["track"],
                                    frame.columns["ts"], strict=True):
        if not isinstance(user, str) or not isinstance(track, str) or ts is None:
            raise InvalidInput(f"listen {key!r}: user and track must be text and ts a time")
        grouped[user].append([str(key), track, float(ts)])
    return grouped


class SqlHistory(SqlComponent, Writer):
    """Folds listens into `<prefix>history` (embedded mode), one transaction a frame.

    Rows are locked (`FOR UPDATE` on PostgreSQL; SQLite has one writer at a time) from
    read to write, and a new user's row is inserted empty first, so concurrent workers
    serialize on a user instead of overwriting each other's merge.
    """

    def __init__(self, url: str, table: str, keep: int = HISTORY_KEEP) -> None:
        super().__init__(url)
        self.table, self.keep = table, keep
        self._table: sa.Table | None = None

    async def start(self) -> None:
        await super().start()
        with self.errors():
            self._table = await asyncio.to_thread(self._load_table, self.table)

    async def write(self, frame: Frame) -> None:
        grouped = listens_by_user(frame)
        with self.errors():
            await asyncio.to_thread(self._fold, grouped)

    def _fold(self, grouped: dict[str, list[Entry]]) -> None:
        table = self._table if self._table is not None else self._load_table(self.table)
        users = sorted(grouped)  # the same lock order in every worker: no deadlock
        with self.engine.begin() as conn:
            conn.execute(_insert_ignore(conn, table), [{"user_id": u, "history": "[]"}
                                                        for u in users])
            rows = conn.execute(sa.select(table.c.user_id, table.c.history)
                                .where(table.c.user_id.in_(users))
                                .with_for_update()).all()
            stored = {r.user_id: entries(r.history) for r in rows}
            conn.execute(
                table.update().where(table.c.user_id == sa.bindparam("u"))
                .values(history=sa.bindparam("h")),
                [{"u": u, "h": orjson.dumps(merge(stored.get(u, []), grouped[u], self.keep))
                  .decode()} for u in users])


def _insert_ignore(conn: sa.Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=["user_id"])
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=["user_id"])


# KEYS[1]: the user's history document; ARGV[1]: new entries as a JSON array; ARGV[2]:
# how many to keep. cjson writes an empty table as {}, hence the explicit guard.
_FOLD = """
local entries, seen = {}, {}
local function add(list)
  for _, e in ipairs(list) do
    local id = tostring(e[1])
    if not seen[id] then seen[id] = true; table.insert(entries, e) end
  end
end
local doc = redis.call('GET', KEYS[1])
if doc then add(cjson.decode(doc)['history'] or {}) end
add(cjson.decode(ARGV[1]))
table.sort(entries, function(a, b)
  if a[3] ~= b[3] then return a[3] > b[3] end
  return tostring(a[1]) > tostring(b[1])
end)
local out = {}
for i = 1, math.min(tonumber(ARGV[2]), #entries) do out[i] = entries[i] end
if #out == 0 then return 0 end
redis.call('SET', KEYS[1], cjson.encode({history = out}))
return #out
"""


class RedisHistory(RedisWriter):
    """Folds listens into `<prefix>history:<user>` (full mode), one Lua call a user,
    pipelined: each merge is atomic in Redis, whatever other workers do meanwhile."""

    def __init__(self, url: str, prefix: str, keep: int = HISTORY_KEEP) -> None:
        super().__init__(url, prefix=prefix, format="json")
        self.keep = keep

    async def write(self, frame: Frame) -> None:
        grouped = listens_by_user(frame)
        with self.errors():
            fold = self.client.register_script(_FOLD)
            async with self.client.pipeline(transaction=False) as pipe:
                for user, new in grouped.items():
                    await fold(keys=[self.name(user)], args=[orjson.dumps(new), self.keep],
                               client=pipe)
                await pipe.execute()


class HistoryTensor:
    """The `pre` step: stored histories → the model's `history` tensor.

    The model takes the newest listens, as many as its signature's `history` width
    (padded with ""); every stored track also goes on, as `played`, for the `post`
    step to keep out of the answer. Users without a stored history get an empty one:
    the model answers them with popular tracks and says so (`cold`).
    """

    def __init__(self, service: Service, model: str) -> None:
        self.service, self.model = service, model

    def width(self, longest: int) -> int:
        signature = self.service.dataplane.deployment(self.model).model.signature
        shape = next(s.shape for s in signature.inputs if s.name == "history")
        return shape[-1] if shape and shape[-1] > 0 else max(longest, 1)

    def __call__(self, frame: Frame) -> Frame:
        stored = [entries(c) for c in frame.columns.get("history", [None] * len(frame))]
        width = self.width(max((len(h) for h in stored), default=0))
        tensor = np.full((len(frame), width), "", dtype=object)
        for row, history in enumerate(stored):
            recent = [e[1] for e in history[:width]]
            tensor[row, :len(recent)] = recent
        columns = {k: v for k, v in frame.columns.items() if k != "history"}
        columns["played"] = [[e[1] for e in h] for h in stored]
        columns["history"] = tensor
        return Frame(frame.keys, columns)


def shown(frame: Frame) -> Frame:
    """The `post` step: each row's items without what the user played, cut to its `k`
    (a column the request sets; all of them when absent), scores alike."""
    n = len(frame)
    played = frame.columns.get("played", [[]] * n)
    ks = frame.columns.get("k", [None] * n)
    items, scores = [], []
    for row in range(n):
        heard = set(played[row])
        limit = int(ks[row]) if ks[row] is not None else len(frame.columns["items"][row])
        kept_items: list[str] = []
        kept_scores: list[float] = []
        # walk the ranked list only as far as the k the request wants
        for item, score in zip(frame.columns["items"][row], frame.columns["scores"][row],
                               strict=True):
            if len(kept_items) == limit:
                break
            if item and item not in heard:
                kept_items.append(str(item))
                kept_scores.append(round(float(score), 6))
        items.append(kept_items)
        scores.append(kept_scores)
    columns = {k: v for k, v in frame.columns.items() if k not in ("played", "k")}
    columns["items"], columns["scores"] = items, scores
    return Frame(frame.keys, columns)


def filter_played(items: Sequence[str], scores: Sequence[float], played: Iterable[str],
                  k: int) -> tuple[list[str], list[float]]:
    """The same cut for lists read back from the nightly top-k."""
    heard = set(played)
    pairs = [(i, s) for i, s in zip(items, scores, strict=True) if i and i not in heard][:k]
    return [i for i, _ in pairs], [s for _, s in pairs]
