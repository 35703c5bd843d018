"""The `music` command: generate, train (register and gate), and one-line errors."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pandas as pd
import pytest
from modelport import Registry, Settings

from music.cli import run


def test_generate_then_train_registers_and_promotes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert run(["generate", "--users", "300", "--tracks", "1000", "--listens", "30000",
                "--seed", "3", "--end", "2025-03-01", "--out", str(data)]) == 0
    assert "generated 30,000 listens by 300 users of 1,000 tracks" in capsys.readouterr().out
    ts = pd.read_parquet(data / "listens.parquet")["ts"]
    assert pd.Timestamp("2024-09-02", tz="UTC") <= ts.min() < ts.max() <= pd.Timestamp(
        "2025-03-01", tz="UTC")  # the 180 days before --end
    assert sorted(p.name for p in data.iterdir()) == [
        "catalog.parquet", "listens.parquet", "users.parquet"]

    home = tmp_path / "home"
    args = ["train", "--interactions", str(data / "listens.parquet"),
            "--catalog", str(data / "catalog.parquet"), "--registry-home", str(home),
            "--factors", "16", "--regularization", "1", "--alpha", "5", "--iterations", "8"]
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "popularity" in out and "recall@10" in out and "95% interval" in out
    assert "registered music-recommender:1 (music-recommender-popularity:1); promoted" in out
    # the catalogue has genres: the report says how much of a top 10 follows the taste
    taste = re.search(r"taste: of each listener's top 10, in their favourite genre: "
                      r"ALS ([\d.]+)%, popularity ([\d.]+)%; that genre is ([\d.]+)% of the "
                      r"catalogue and ([\d.]+)% of their own listens", out)
    assert taste is not None, out
    als, popularity, catalog, own = map(float, taste.groups())
    assert catalog < 20 < 40 < min(als, own) and popularity < als
    with Registry(settings=Settings(home=home)) as registry:
        version = registry.resolve("music-recommender@production")
    assert version.params["factors"] == 16 and version.params["alpha"] == 5.0
    assert version.tags["dataset"] == "listens.parquet"
    assert version.tags["items"] == 1000  # the catalogue, heard or not
    assert version.tags["split"] == "per-user time split: last 20% of each user's events"
    low, high = version.metrics["recall@10_low"], version.metrics["recall@10_high"]
    assert f"[{low:.4f}, {high:.4f}]" in out and version.metrics["users"] > 100
    assert version.metrics["genre_share@10"] == pytest.approx(als / 100, abs=0.001)


def test_errors_are_one_line_and_exit_1(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "plays.csv"
    pd.DataFrame({"user": ["u"], "track": ["t"], "ts": [1]}).to_csv(bad, index=False)
    assert run(["train", "--interactions", str(bad), "--factors", "4"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing column item" in err
    assert err.count("\n") == 1

    assert run(["evaluate", "--interactions", str(tmp_path / "absent.parquet")]) == 1
    assert "no such file" in capsys.readouterr().err

    assert run(["generate", "--end", "last friday", "--out", str(tmp_path / "d")]) == 2
    assert "'last friday' is not a date (YYYY-MM-DD)" in capsys.readouterr().err

    assert run(["train"]) == 2  # usage: one of --interactions or --movielens
    assert "exactly one of --interactions PATH or --movielens" in capsys.readouterr().err


@pytest.mark.parametrize("full", [False, True])
def test_a_port_in_use_is_one_line_before_any_setup(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], full: bool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        # in full mode the events API and the worker take the two ports after it
        first = port - 1 if full else port
        args = ["up", "--home", str(tmp_path / "home"), "--port", str(first)]
        assert run([*args, "--full"] if full else args) == 1
    assert capsys.readouterr().err == f"error: port {port} is in use; pass --port\n"
    assert not (tmp_path / "home").exists()  # nothing generated, trained or served


@pytest.mark.parametrize(("args", "days", "fraction", "per_user"), [
    ({}, None, 0.2, True),                                    # the last 20% of each user's
    ({"test_fraction": 0.1}, None, 0.1, True),
    ({"global_cut": True}, None, 0.2, False),                 # a global share
    ({"test_days": 30.0}, 30.0, 0.2, False),                  # a global cut by days
    ({"global_cut": True, "test_fraction": 0.3}, None, 0.3, False),
])
def test_split_options(args: dict[str, object], days: float | None, fraction: float,
                       per_user: bool) -> None:
    from music.cli import _config

    given: dict[str, object] = {"test_days": None, "test_fraction": None,
                                "global_cut": False, **args}
    config = _config("d", given["test_days"], given["test_fraction"],  # type: ignore[arg-type]
                     given["global_cut"], 50, 0)  # type: ignore[arg-type]
    assert (config.test_days, config.test_fraction, config.per_user) == (days, fraction,
                                                                         per_user)


def test_test_days_with_a_fraction_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["evaluate", "--movielens", "--test-days", "7", "--global-cut"]) == 2
    assert "--test-days is a global cut" in capsys.readouterr().err
