"""File components: CSV, Parquet and JSON lines written and looked up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from modelport.errors import ConfigError
from modelport.pipeline import Frame
from modelport.pipeline.files import FileRetriever, FileWriter


def scores(keys: list[int]) -> Frame:
    p = np.linspace(0.0, 1.0, len(keys))
    score = p.copy()
    score[1] = np.nan
    return Frame(keys, {
        "probabilities": np.stack([1 - p, p], axis=1),
        "predictions": (p > 0.5).astype(np.int64),
        "score": score,
        "flagged": p > 0.9,
        "label": np.asarray([f"u{k}" for k in keys], dtype=object),
    })


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
async def test_written_rows_look_up(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"scores{suffix}"
    writer = FileWriter(path)
    await writer.start()
    for start in (0, 700, 1400):  # three writes: three row groups / appends
        await writer.write(scores(list(range(start, start + 700))))
    await writer.close()

    retriever = FileRetriever(path)
    await retriever.start()
    assert (await retriever.get(list(range(2100)))).keys == list(range(2100))

    got = await retriever.get([701, "2", 99_999, 0])
    assert got.keys == [701, "2", 0]  # the caller's keys; a string finds an integer key
    assert got.columns["predictions"].tolist() == [0, 0, 0]
    assert np.isnan(got.columns["score"][0])  # NaN written as missing, read back as NaN
    assert got.columns["label"].tolist() == ["u701", "u2", "u0"]
    assert got.columns["flagged"].tolist() == [False, False, False]
    probabilities = got.columns["probabilities"]
    if suffix == ".csv":  # JSON text per cell
        probabilities = np.asarray([orjson.loads(p) for p in probabilities])
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities[2], [1.0, 0.0])


async def test_csv_appends_across_runs_and_lookups_see_changes(tmp_path: Path) -> None:
    path = tmp_path / "out" / "scores.csv"
    for start in (0, 10):  # two runs of a job, each its own writer
        writer = FileWriter(path)
        await writer.start()
        await writer.write(Frame(list(range(start, start + 10)), {"s": np.arange(10.0)}))
        await writer.close()
    assert path.read_text().count("\"id\"") == 1  # one header
    retriever = FileRetriever(path)
    assert (await retriever.get([15])).columns["s"].tolist() == [5.0]
    writer = FileWriter(path)
    await writer.write(Frame([15, 99], {"s": [-1.0, -2.0]}))  # a rerun appends key 15 again
    await writer.close()
    got = await retriever.get([15, 99])  # the file changed: indexed again; last row wins
    assert got.columns["s"].tolist() == [-1.0, -2.0]


async def test_parquet_is_not_appended_to_but_a_folder_gains_part_files(tmp_path: Path) -> None:
    single = tmp_path / "scores.parquet"
    writer = FileWriter(single)
    await writer.write(Frame([1], {"s": [1.0]}))
    await writer.close()
    with pytest.raises(ConfigError, match="cannot be appended to"):
        await FileWriter(single).start()
    again = FileWriter(single, overwrite=True)
    await again.write(Frame([2], {"s": [2.0]}))
    await again.close()
    assert (await FileRetriever(single).get([1, 2])).keys == [2]

    folder = tmp_path / "runs"
    folder.mkdir()
    for start in (0, 5):
        writer = FileWriter(folder)
        await writer.write(Frame(list(range(start, start + 5)), {"s": np.ones(5)}))
        await writer.close()
    assert len(list(folder.glob("part-*.parquet"))) == 2
    retriever = FileRetriever(folder)
    assert (await retriever.get(list(range(10)))).keys == list(range(10))


async def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        await FileRetriever(tmp_path / "nope.csv").start()
    (tmp_path / "x.csv").write_text("user,a\n1,2\n")
    with pytest.raises(ConfigError, match="has no key column 'id' \\(it has user, a\\)"):
        await FileRetriever(tmp_path / "x.csv").get([1])
    assert (await FileRetriever(tmp_path / "x.csv", key="user").get([1])).records() == [
        {"a": 2}]
    with pytest.raises(ConfigError, match="cannot tell the format"):
        FileWriter(tmp_path / "x.xlsx")
    with pytest.raises(ConfigError, match="format must be"):
        FileRetriever(tmp_path / "x.csv", format="xml")  # type: ignore[arg-type]
    writer = FileWriter(tmp_path / "y.jsonl")
    await writer.write(Frame([1], {"a": [1]}))
    with pytest.raises(ConfigError, match="one set of columns"):
        await writer.write(Frame([2], {"b": [1]}))
    await writer.close()
    lines = (tmp_path / "y.jsonl").read_text().splitlines()
    assert [orjson.loads(line) for line in lines] == [{"id": 1, "a": 1}]
