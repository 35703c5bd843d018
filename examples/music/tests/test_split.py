"""Time splits leak no future; the hold-out asks what the service will be asked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from music.interactions import normalize
from music.split import Split, hold_out, recent_histories, time_split


def frame(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    users, items, days = zip(*rows, strict=True)
    return normalize(pd.DataFrame({
        "user": users, "item": items,
        "ts": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(days, unit="D")}))


def test_global_cut_puts_every_test_event_after_every_train_event(
        events: pd.DataFrame) -> None:
    for split in (time_split(events, days=14), time_split(events, fraction=0.1)):
        assert split.train["ts"].max() < split.test["ts"].min()
        assert len(split.train) + len(split.test) == len(events)
    by_days = time_split(events, days=14)
    assert by_days.test["ts"].max() - by_days.test["ts"].min() <= pd.Timedelta(days=14)
    assert "last 14 days" in by_days.description
    assert time_split(events, fraction=0.1).test.shape[0] == pytest.approx(0.1 * len(events),
                                                                             rel=0.01)


def test_per_user_split_keeps_each_users_future_out(events: pd.DataFrame) -> None:
    split = time_split(events, fraction=0.2, per_user=True)
    last_train = split.train.groupby("user", observed=True)["ts"].max()
    first_test = split.test.groupby("user", observed=True)["ts"].min()
    both = last_train.index.intersection(first_test.index)
    assert (last_train[both] <= first_test[both]).all()
    assert len(both) == events["user"].nunique()  # every user has events on both sides
    assert "per-user" in split.description


def test_bad_splits_say_why(events: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        time_split(events, fraction=1.5)
    with pytest.raises(ValueError, match="positive"):
        time_split(events, days=0)
    with pytest.raises(ValueError, match="empty train or test"):
        time_split(events, days=10_000)


def test_recent_histories_are_most_recent_first_and_padded() -> None:
    events = frame([("u1", "a", 1), ("u1", "b", 2), ("u1", "a", 3), ("u1", "c", 4),
                    ("u2", "z", 1)])
    users, histories = recent_histories(events, 3)
    assert users.tolist() == ["u1", "u2"]
    assert histories.tolist() == [["c", "a", "b"], ["z", "", ""]]
    _, picked = recent_histories(events, 2, np.array(["u2", "nobody"], dtype=object))
    assert picked.tolist() == [["z", ""], ["", ""]]


def test_hold_out_counts_only_new_known_items_of_known_users() -> None:
    train = frame([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u3", "c", 1)])
    test = frame([("u1", "a", 10),   # heard before: not relevant
                  ("u1", "c", 11),   # new to u1, known item: relevant
                  ("u1", "n", 12),   # first heard after the cut: no model knows it
                  ("u2", "a", 10),   # u2 only repeats: not evaluated
                  ("u4", "a", 10)])  # new user: popularity for everyone, not evaluated
    holdout = hold_out(Split(train, test, "hand-made"), history_length=3)
    assert holdout.users.tolist() == ["u1"]
    assert holdout.relevant == [{"c"}]
    assert holdout.histories.tolist() == [["b", "a", ""]]
    assert holdout.dropped_new_items == 1
