"""The generator: seeded, shaped like a music service's logs, fast."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from music.data import Config, Dataset, generate
from music.interactions import load_interactions


def test_same_seed_same_data_other_seed_other_data(small: Dataset, small_config: Config) -> None:
    again = generate(small_config)
    for name in ("catalog", "users", "listens"):
        pd.testing.assert_frame_equal(getattr(small, name), getattr(again, name))
    other = generate(Config(**{**small_config.__dict__, "seed": small_config.seed + 1}))
    assert not other.listens["item"].equals(small.listens["item"])


def test_shapes_and_references(small: Dataset, small_config: Config) -> None:
    catalog, users, listens = small.catalog, small.users, small.listens
    assert len(catalog) == small_config.tracks and catalog["item"].is_unique
    assert len(users) == small_config.users and users["user"].is_unique
    assert len(listens) == small_config.listens
    assert list(listens.columns) == ["user", "item", "ts"]
    assert set(listens["item"].astype(str)) <= set(catalog["item"])
    assert set(listens["user"].astype(str)) == set(users["user"])
    assert users["listens"].sum() == small_config.listens
    assert catalog["duration_s"].between(60, 900).all()
    assert catalog["title"].str.len().gt(0).all()
    # artists have a main genre: most of an artist's tracks share it
    share = catalog.groupby("artist_id")["genre"].agg(lambda g: g.value_counts().iloc[0] / len(g))
    assert share.mean() > 0.8


def test_popularity_is_a_power_law(small: Dataset, small_config: Config) -> None:
    plays = small.listens["item"].value_counts().to_numpy()
    top = max(1, small_config.tracks // 100)
    # uniform listening would give the top 1% about 1% of the listens (at the default
    # size, 20,000 tracks, the top 1% hold about 35%)
    assert plays[:top].sum() / plays.sum() > 0.12
    assert plays[: small_config.tracks // 10].sum() / plays.sum() > 0.45


def test_tastes_are_narrow_and_favourites_repeat(small: Dataset) -> None:
    listens = small.listens.merge(small.catalog[["item", "genre"]].astype({"item": "category"}),
                                  on="item")
    top_genre_share = listens.groupby("user", observed=True)["genre"].agg(
        lambda g: g.value_counts().iloc[0] / len(g))
    assert top_genre_share.median() > 0.3  # 16 genres: uniform taste would give ~0.1
    # a listener's top genre (the page's "mostly soul") is the genre they play most: it
    # was the top of their taste draw, another genre for one listener in five, whose
    # recommendations then followed what they played, not what the page said
    stated = small.users.set_index("user")["top_genre"]
    counts = listens.groupby(["user", "genre"], observed=True).size()
    best = counts.groupby(level="user", observed=True).transform("max")
    # ties: any of the genres played most is right
    tops = counts[counts == best].reset_index()
    assert set(zip(stated.index, stated, strict=True)) <= set(
        zip(tops["user"], tops["genre"], strict=True))
    repeats = small.listens.duplicated(["user", "item"]).mean()
    assert 0.2 < repeats < 0.8


def test_sessions_are_ordered_and_never_overlap(small: Dataset, small_config: Config) -> None:
    listens = small.listens.merge(
        small.catalog[["item", "duration_s"]].astype({"item": "category"}), on="item")
    listens = listens.sort_values(["user", "ts"], kind="stable")
    same_user = listens["user"].to_numpy()[1:] == listens["user"].to_numpy()[:-1]
    gap = np.diff(listens["ts"].to_numpy()).astype("timedelta64[ms]").astype(np.int64) / 1000
    # the next track starts only after the previous one has played through
    assert (gap[same_user] >= listens["duration_s"].to_numpy()[:-1][same_user] - 0.002).all()
    start = small_config.start
    assert listens["ts"].min() >= start
    assert listens["ts"].max() <= start + pd.Timedelta(days=small_config.days + 1)
    joined = listens.merge(small.users[["user", "joined"]].astype({"user": "category"}),
                           on="user")
    assert (joined["ts"] >= joined["joined"]).all()
    # sessions: most consecutive plays of a user are back to back, some hours apart
    back_to_back = gap[same_user] < listens["duration_s"].to_numpy()[:-1][same_user] + 10
    assert 0.8 < back_to_back.mean() < 0.97


def test_listening_has_a_daily_rhythm_and_ends_today(small: Dataset) -> None:
    # the listens were spread evenly over the clock, from 2024-01-01 to 2024-06-29:
    # a history read "6/28/2024" for every entry, and 4 am was as busy as 8 pm
    hours = small.listens["ts"].dt.hour
    night, evening = hours.between(2, 5).mean(), hours.between(18, 21).mean()
    assert night < 0.1 < 0.2 < evening  # an even clock gives 4 hours of 24 (0.17) each
    weekend = small.listens["ts"].dt.day_of_week >= 5
    assert weekend.mean() > 2 / 7 + 0.02
    today = pd.Timestamp.now(tz="UTC").floor("D")
    assert today - pd.Timedelta(days=1) < small.listens["ts"].max() <= today
    # a fixed end gives the same window whenever it is generated
    fixed = generate(Config(users=20, tracks=50, listens=500, days=30, end="2024-06-30"))
    assert fixed.listens["ts"].max() <= pd.Timestamp("2024-06-30", tz="UTC")
    assert fixed.listens["ts"].min() >= pd.Timestamp("2024-05-31", tz="UTC")


def test_written_files_load_as_interactions(small: Dataset, small_config: Config,
                                           tmp_path: Path) -> None:
    paths = small.write(tmp_path)
    events = load_interactions(paths["listens"])
    assert len(events) == small_config.listens
    assert events["ts"].is_monotonic_increasing
    assert (events["weight"] == 1.0).all()
    assert pd.read_parquet(paths["catalog"]).shape[0] == small_config.tracks


@pytest.mark.parametrize("bad", [{"users": 0}, {"listens": 0}, {"days": 0}])
def test_refuses_empty_sizes(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        generate(Config(**{"users": 10, "tracks": 10, "listens": 100, **bad}))


def test_defaults_generate_in_seconds() -> None:
    start = time.perf_counter()
    data = generate()
    seconds = time.perf_counter() - start
    assert len(data.listens) == 1_000_000
    assert seconds < 30  # about 2 s on a quiet laptop core; generous for busy CI machines
