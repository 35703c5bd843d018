"""Loading interactions from files and from MovieLens, and the errors on bad files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from music.interactions import InteractionsError, load_interactions, load_movielens


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_epoch_seconds_and_no_weight(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", "user,item,ts,extra\n7,b,1700000060,x\n7,a,1700000000,y\n")
    events = load_interactions(path)
    assert list(events.columns) == ["user", "item", "ts", "weight"]
    assert events["item"].astype(str).tolist() == ["a", "b"]  # sorted by time
    assert events["user"].astype(str).tolist() == ["7", "7"]  # ids are strings
    assert events["ts"].iloc[0] == pd.Timestamp("2023-11-14 22:13:20", tz="UTC")
    assert events["weight"].tolist() == [1.0, 1.0]


def test_iso_times_weights_and_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user": ["u1", "u2"], "item": ["t1", "t1"],
                          "ts": ["2024-01-02T10:00:00Z", "2024-01-01 09:00"],
                          "weight": [2.5, 1]})
    frame.to_parquet(tmp_path / "events.parquet")
    events = load_interactions(tmp_path / "events.parquet")
    assert events["user"].astype(str).tolist() == ["u2", "u1"]
    assert str(events["ts"].dt.tz) == "UTC"
    assert events["weight"].tolist() == [1.0, 2.5]


@pytest.mark.parametrize(("text", "message"), [
    ("user,ts\n1,5\n", "missing column item (has user, ts;"),
    ("user,item\n1,5\n", "missing column ts (has user, item;"),
    ("user,item,ts\n", "no rows"),
    ("user,item,ts\n1,a,yesterday-ish\n", "ts is not a time"),
    ("user,item,ts,weight\n1,a,5,-1\n1,b,6,2\n", "weight must be a positive number; 1 rows"),
    ("user,item,ts\n,a,5\n", "user is empty in 1 rows"),
])
def test_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "events.csv", text)
    with pytest.raises(InteractionsError, match=r"events\.csv") as info:
        load_interactions(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_columns_are_all_named(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", "userId,movieId\n1,2\n")
    with pytest.raises(InteractionsError, match="missing columns user, item, ts"):
        load_interactions(path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InteractionsError, match="no such file"):
        load_interactions(tmp_path / "absent.csv")
    with pytest.raises(InteractionsError, match=r"unknown format '\.json'"):
        load_interactions(write(tmp_path, "events.json", "{}"))
    with pytest.raises(InteractionsError, match="cannot read"):
        load_interactions(write(tmp_path, "events.parquet", "not parquet"))


def test_movielens_keeps_ratings_of_3_5_and_more_as_positives() -> None:
    events = load_movielens()
    # ml-latest-small (2016): 100,004 ratings, of which 62,106 are 3.5 stars or more
    assert len(events) == 62_106
    assert (events["weight"] == 1.0).all()
    assert events["user"].nunique() <= 671
    assert events["ts"].is_monotonic_increasing
    assert len(load_movielens(min_rating=5.0)) < len(events)
    with pytest.raises(InteractionsError, match="no rating is 6"):
        load_movielens(min_rating=6)
