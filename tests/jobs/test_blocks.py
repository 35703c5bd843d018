"""Blocks of a batch job run on Ray: the plan covers the source exactly (every row in
one block, once), is stored once per run, and the KubeRay manifest is a valid job.
No Ray here: the plan and its reads are what the Ray tasks run; and nothing imports
Ray unless a job runs on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from modelport.config import load_config
from modelport.jobs.blocks import Block, BlockTable, plan
from modelport.jobs.query import KeyQuery
from modelport.jobs.sources import FileRows, Resume, Source
from modelport.jobs.state import JobState

ROOT = Path(__file__).resolve().parents[2]


def _keys_in_blocks(source: Source, blocks: list[Block]) -> list[list[object]]:
    return [[k for chunk in source.chunks(2, b.resume(source)) for k in chunk.frame.keys]
            for b in blocks]


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'data.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id INTEGER, x REAL)"))
        # key 5 twice: a rows query's blocks end at keys, so both are in one block
        conn.execute(sa.text("INSERT INTO t VALUES (:id, :x)"),
                     [{"id": i, "x": i / 10} for i in [*range(1, 11), 5]])
    engine.dispose()
    return url


def test_a_keys_query_is_cut_into_key_ranges_that_cover_it_once(db: str) -> None:
    source = KeyQuery(db, "SELECT id FROM t")
    blocks = plan(source, 3)
    assert [(b.lo, b.hi) for b in blocks] == [(None, 3), (3, 6), (6, 9), (9, None)]
    assert _keys_in_blocks(source, blocks) == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]
    # as many keys as blocks of 5 exactly: no empty block after the last
    assert [(b.lo, b.hi) for b in plan(source, 5)] == [(None, 5), (5, None)]
    source.close()


def test_a_rows_query_keeps_a_repeated_key_in_one_block(db: str) -> None:
    source = KeyQuery(db, "SELECT id, x FROM t")
    source.check()
    blocks = plan(source, 3)
    read = [set(block) for block in _keys_in_blocks(source, blocks)]
    assert set().union(*read) == set(range(1, 11))
    assert sum(len(block) for block in read) == 10  # no key in two blocks
    source.close()


def test_a_file_is_cut_into_row_ranges(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("id,x\n" + "".join(f"{i},{i / 10}\n" for i in range(1, 11)))
    source = FileRows(path)
    blocks = plan(source, 4)
    assert [(b.lo, b.hi) for b in blocks] == [(None, 4), (4, 8), (8, None)]
    assert _keys_in_blocks(source, blocks) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_a_runs_plan_is_stored_once_and_blocks_are_marked_with_the_checkpoint(
        db: str) -> None:
    state = JobState(db, rejects_table="out_rejects")
    cp = state.open("job", "score", "src", fresh=False)
    table = BlockTable(state.engine)
    first = table.open("job", cp.run, lambda: [Block(0, None, 3), Block(1, 3, None)])
    # a resumed run reads the stored plan, not a new one (the data may have moved)
    again = table.open("job", cp.run, lambda: [Block(0, None, None)])
    assert [(b.lo, b.hi, b.done) for b in again] == [(None, 3, False), (3, None, False)]
    assert first == again
    cp.read, cp.chunks = 3, 1
    state.commit(cp, [], table.mark_done("job", cp.run, 0))
    assert [b.done for b in table.open("job", cp.run, list)] == [True, False]
    state.close()


def test_the_kuberay_rayjob_manifest_parses_and_its_config_runs_on_ray(
        tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "ray" / "rayjob.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "RayJob"}
    job = kinds["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["entrypoint"].startswith("modelport batch score --config ")
    assert job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    path = tmp_path / "modelport.yaml"
    path.write_text(kinds["ConfigMap"]["data"]["modelport.yaml"])
    config = load_config(path, {"DATABASE_URL": "postgresql://db/scoring"})
    [pipeline] = config.pipelines
    assert (pipeline.engine, pipeline.ray.address) == ("ray", "auto")


def test_ray_is_imported_only_when_a_job_runs_on_it() -> None:
    code = ("import sys, modelport.jobs, modelport.cli, modelport.config; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(params=["sqlite", "postgres"])
def repeated(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Rows with key 3 three times and 5 twice, each row told apart by its x."""
    url = f"sqlite:///{tmp_path / 'rows.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("pg_url")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE r (id INTEGER, x REAL)"))
        conn.execute(sa.text("INSERT INTO r VALUES (:id, :x)"),
                     [{"id": k, "x": i} for i, k in enumerate([1, 2, 3, 3, 3, 4, 5, 5, 6])])
    engine.dispose()
    return url


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4])
def test_a_rows_query_reads_every_row_once_and_resumes_without_losing_a_repeated_key(
        repeated: str, chunk_size: int) -> None:
    """A chunk never ends inside a run of one key: the job's checkpoint (the chunk's
    last key) resumes after all of that key's rows, and none is skipped on the way."""
    source = KeyQuery(repeated, "SELECT id, x FROM r")
    source.check()

    def rows(resume: Resume) -> list[list[tuple[object, float]]]:
        return [list(zip(c.frame.keys, c.frame.columns["x"].tolist(), strict=True))
                for c in source.chunks(chunk_size, resume)]

    chunks = rows(Resume())
    read = [row for chunk in chunks for row in chunk]
    assert sorted(x for _, x in read) == list(range(9))  # every row once
    for i, chunk in enumerate(chunks):
        # a job killed after chunk i resumes after its last key: the rest, exactly
        rest = [row for c in rows(Resume(last_key=chunk[-1][0])) for row in c]
        assert sorted(read[:sum(map(len, chunks[:i + 1]))] + rest) == sorted(read)
    source.close()
