"""Folding listens into histories: merge rules, the SQL fold and the Redis (Lua) fold."""

from __future__ import annotations

import uuid

import numpy as np
import orjson
import pytest
from modelport import InvalidInput
from modelport.pipeline import Frame

from music.history import RedisHistory, SqlHistory, entries, merge, shown
from music.store import Store
from music.system import System


def listens(rows: list[tuple[str, str, str, float]]) -> Frame:
    """Listens as the realtime worker hands them to the writer: keyed by listen id."""
    return Frame([r[0] for r in rows], {"user": [r[1] for r in rows],
                                        "track": [r[2] for r in rows],
                                        "ts": [r[3] for r in rows]})


def test_merge_is_newest_first_one_entry_per_listen_and_bounded() -> None:
    old = [["b", "t2", 20.0], ["a", "t1", 10.0]]
    new = [["c", "t3", 15.0], ["b", "t2", 20.0], ["d", "t4", 30.0]]
    assert merge(old, new, keep=3) == [["d", "t4", 30.0], ["b", "t2", 20.0], ["c", "t3", 15.0]]
    assert merge(merge(old, new), new) == merge(old, new)  # folding twice changes nothing


def test_entries_read_every_stored_form() -> None:
    assert entries(None) == [] and entries("") == []
    assert entries('[["a", "t1", 1.5]]') == [["a", "t1", 1.5]]
    assert entries({"history": [["a", "t1", 1.5]]}) == [["a", "t1", 1.5]]


def test_shown_takes_out_played_tracks_and_cuts_to_k() -> None:
    frame = Frame(["u1"], {"items": np.array([["t1", "t2", "t3", ""]], dtype=object),
                           "scores": np.array([[0.9, 0.8, 0.7, 0.0]], dtype=np.float32),
                           "played": [["t2"]], "k": [2]})
    out = shown(frame)
    assert out.columns["items"] == [["t1", "t3"]]
    assert out.columns["scores"] == [[pytest.approx(0.9), pytest.approx(0.7)]]
    assert "played" not in out.columns and "k" not in out.columns


@pytest.mark.asyncio
async def test_sql_fold_merges_and_a_redelivery_changes_nothing(system: System) -> None:
    writer = SqlHistory(system.database, system.table("history"))
    await writer.start()
    try:
        batch = listens([("l1", "zed", "t001", 100.0), ("l2", "zed", "t002", 200.0)])
        await writer.write(batch)
        await writer.write(batch)  # the stream delivered it again
        await writer.write(listens([("l3", "zed", "t003", 150.0)]))
    finally:
        await writer.close()
    store = Store(system)
    try:
        with store.engine.connect() as conn:
            table = store.t["history"]
            stored = conn.execute(table.select().where(table.c.user_id == "zed")).one()
    finally:
        store.close()
    assert [e[0] for e in orjson.loads(stored.history)] == ["l2", "l3", "l1"]


@pytest.mark.asyncio
async def test_redis_fold_is_atomic_per_user_and_idempotent(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:history:"
    writer = RedisHistory(redis_url, prefix, keep=3)
    await writer.start()
    try:
        await writer.write(listens([("l1", "ann", "t1", 1.0), ("l2", "bob", "t2", 2.0)]))
        await writer.write(listens([("l1", "ann", "t1", 1.0), ("l3", "ann", "t3", 3.0),
                                    ("l4", "ann", "t4", 4.0), ("l5", "ann", "t5", 0.5)]))
        ann = orjson.loads(await writer.client.get(f"{prefix}ann"))
        bob = orjson.loads(await writer.client.get(f"{prefix}bob"))
        await writer.client.delete(f"{prefix}ann", f"{prefix}bob")
    finally:
        await writer.close()
    assert [e[0] for e in ann["history"]] == ["l4", "l3", "l1"]  # newest 3; l5 is oldest
    assert bob == {"history": [["l2", "t2", 2.0]]}


@pytest.mark.asyncio
async def test_a_listen_without_a_user_is_refused_by_name(system: System) -> None:
    writer = SqlHistory(system.database, system.table("history"))
    with pytest.raises(InvalidInput, match="'user' is missing"):
        await writer.write(Frame(["l1"], {"track": ["t1"], "ts": [1.0]}))
