"""The store's side of a play: the listener list counts it, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from conftest import PG_URL, require
from music.store import RECOUNT_GENRE_BELOW, Store
from music.system import System


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgresql":
        require("PostgreSQL", PG_URL, 5432)
        system = System(home=tmp_path, db_url=PG_URL,
                        prefix=f"music_{uuid.uuid4().hex[:8]}_")
    else:
        system = System(home=tmp_path)
    store = Store(system)
    store.create()
    store.load(
        pd.DataFrame({"item": ["t1", "t2", "t3"], "title": ["A", "B", "C"],
                      "artist": ["x", "y", "z"], "genre": ["soul", "pop", "pop"],
                      "duration_s": [200, 200, 200]}),
        pd.DataFrame({"user": ["old"], "top_genre": ["jazz"],
                      "listens": [RECOUNT_GENRE_BELOW + 10]}),
        pd.DataFrame({"user": pd.Series([], dtype=str), "item": pd.Series([], dtype=str),
                      "ts": pd.Series([], dtype="datetime64[ns, UTC]")}))
    try:
        yield store
    finally:
        store.drop()
        store.close()


def listed(store: Store, user: str) -> dict[str, object]:
    (row,) = [u for u in store.users(user) if u["user_id"] == user]
    return row


def test_a_play_counts_and_a_new_listener_gets_the_genre_they_play(store: Store) -> None:
    assert store.users("new") == []
    assert store.add_listen("l1", "new", "t1", 1.0)
    assert listed(store, "new") == {"user_id": "new", "top_genre": "soul", "listens": 1}
    assert store.add_listen("l2", "new", "t2", 2.0)
    assert store.add_listen("l3", "new", "t3", 3.0)
    assert listed(store, "new") == {"user_id": "new", "top_genre": "pop", "listens": 3}
    assert not store.add_listen("l3", "new", "t3", 3.0)  # a retry: stored and counted once
    assert listed(store, "new")["listens"] == 3
    # a long history's top genre (from the data set) stays; the play counts
    assert store.add_listen("l4", "old", "t2", 4.0)
    assert listed(store, "old") == {"user_id": "old", "top_genre": "jazz",
                                    "listens": RECOUNT_GENRE_BELOW + 11}
