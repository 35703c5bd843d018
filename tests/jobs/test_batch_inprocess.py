"""Batch jobs in-process: memory stays bounded on a large table, a crash mid-run
resumes exactly (with its rejects file cut back), Parquet input, SQLite keys."""

from __future__ import annotations

import json
import tracemalloc
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from batch_helpers import (
    CrashingWriter,
    cancer,
    features,
    make_patients,
    make_results,
    query,
    register,
)

from modelport import Registry, Settings
from modelport.config import load_config
from modelport.errors import ConfigError
from modelport.jobs import BatchJob, BatchOptions, FileRows, KeyQuery
from modelport.jobs.sources import Resume
from modelport.pipeline import Frame, MemoryRetriever, MemoryWriter, pgcopy
from modelport.service import Service


def service_for(tmp_path: Path, url: str, *, retriever: str = "{type: memory, rows: {}}",
                writer: str = "{type: memory}", **settings_: Any) -> tuple[Settings, Any]:
    settings = Settings(home=tmp_path / "home", **settings_)
    register(settings.home)
    path = tmp_path / "modelport.yaml"
    path.write_text(f"""
pipelines:
  - name: score
    model: cancer@production
    retriever: {retriever}
    writer: {writer}
    outputs: [predictions]
""")
    return settings, load_config(path, {"DB": url})


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_memory_stays_bounded_on_300k_rows(tmp_path: Path, pg_url: str) -> None:
    rows = 300_000
    make_patients(pg_url, rows)
    make_results(pg_url)
    # no prediction log: its buffer holds up to `buffer_size` sampled rows, however
    # small the chunks (about 11 MB here, 30 when its writes fall behind on a slow
    # machine); this measures what the job holds
    settings, config = service_for(tmp_path, pg_url,
                                   retriever="{type: sql, url: '${DB}', table: patients}",
                                   writer="{type: sql, url: '${DB}', table: results}",
                                   monitoring={"sample_rate": 0})
    with Registry(settings=settings) as reg:
        service = Service(settings, config, reg)
        await service.start(follow=False)
        try:
            job = BatchJob(service, "score", KeyQuery(pg_url, "SELECT id FROM patients"),
                           BatchOptions(chunk_size=1000))
            tracemalloc.start()
            try:
                result = await job.run()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        finally:
            await service.stop()
    assert result.read == result.written == rows
    # the features alone are 300k x 31 x 8 bytes = 74 MB as doubles (several times
    # that as Python objects); a job holding them would peak far above this (measured:
    # about 3.5 MB with 1,000-row chunks, most of it fixed costs)
    data_bytes = rows * 31 * 8
    assert peak < data_bytes / 8, f"peak {peak / 1e6:.1f} MB of {data_bytes / 1e6:.0f} MB"
    assert query(pg_url, "SELECT count(*), count(DISTINCT id) FROM results") == [(rows, rows)]


def sqlite_keys(tmp_path: Path, n: int) -> str:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE wanted (id INTEGER)"))
        # unordered, with a duplicate: the job reads them distinct and in key order
        conn.execute(sa.text("INSERT INTO wanted VALUES (:id)"),
                     [{"id": i} for i in [*range(n, 0, -1), 5]])
    engine.dispose()
    return url


async def test_a_crash_mid_run_resumes_after_the_last_checkpoint(tmp_path: Path) -> None:
    X, clf = cancer()
    data = features(1000)
    records = pd.DataFrame(data, columns=X.columns).to_dict(orient="records")
    patients = {i + 1: r for i, r in enumerate(records)}
    patients[250]["mean area"] = "n/a"  # rejected: in chunk 3 (rows 201-300)
    patients[950]["mean area"] = float("nan")  # rejected: in chunk 10
    del patients[420]  # no data: in chunk 5
    url = sqlite_keys(tmp_path, 1000)
    settings, config = service_for(tmp_path, url)
    rejects = tmp_path / "rejects.jsonl"
    with Registry(settings=settings) as reg:
        service = Service(settings, config, reg)
        pipe = service.pipeline("score")
        pipe.retriever = retriever = MemoryRetriever(patients)
        pipe.writer = CrashingWriter(crash_on=6)
        await service.start(follow=False)
        try:
            options = BatchOptions(chunk_size=100, rejects_file=rejects)
            with pytest.raises(RuntimeError, match="killed"):
                await BatchJob(service, "score", KeyQuery(url, "SELECT id FROM wanted"),
                               options).run()
            assert len(rejects.read_text().splitlines()) == 2  # chunks 1-5 committed
            first = pipe.writer
            pipe.writer = MemoryWriter()
            retriever.calls.clear()
            result = await BatchJob(service, "score", KeyQuery(url, "SELECT id FROM wanted"),
                                    options).run()
        finally:
            await service.stop()
    assert result.resumed_after == 500 and result.read == 500  # chunk 6 redone, not 1-5
    assert retriever.calls[0][0] == 501
    assert result.exit_code == 3 and result.total_rejected == 3 and result.rejected == 1
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [r["key"] for r in lines] == [250, 420, 950]  # each once: no duplicate from the redo
    assert lines[1]["reason"] == "no data for key 420" and lines[1]["payload"] is None
    assert "mean area" in lines[0]["reason"] and lines[0]["payload"]["mean area"] == "n/a"
    written = {**first.rows, **pipe.writer.rows}  # type: ignore[attr-defined]
    assert sorted(written) == sorted(set(range(1, 1001)) - {250, 420, 950})
    expected = clf.predict(pd.DataFrame(data, columns=X.columns))
    assert all(written[k]["predictions"] == expected[k - 1] for k in written)


async def test_a_changed_job_does_not_resume_the_old_ones_checkpoint(tmp_path: Path) -> None:
    """Killed after 300 of 1,000 rows written to `results_a`, the job is run again
    writing to `results_b`: resuming would leave `results_b` without the first 300."""
    X, _ = cancer()
    records = pd.DataFrame(features(1000), columns=X.columns).to_dict(orient="records")
    patients = {i + 1: r for i, r in enumerate(records)}
    url = sqlite_keys(tmp_path, 1000)
    keys = "SELECT id FROM wanted"

    async def run(table: str, *, crash_on: int = 0, fresh: bool = False) -> Any:
        settings, config = service_for(
            tmp_path, url, writer=f"{{type: sql, url: '${{DB}}', table: {table}}}")
        if not query(url, f"SELECT count(*) FROM sqlite_master WHERE name = '{table}'")[0][0]:
            make_results(url, table)
        with Registry(settings=settings) as reg:
            service = Service(settings, config, reg)
            pipe = service.pipeline("score")
            pipe.retriever = MemoryRetriever(patients)
            writer, write = pipe.writer, pipe.writer.write  # type: ignore[union-attr]

            async def crashing(frame: Frame) -> None:
                await write(frame)
                # the chunk `crash_on` (keys in order, 100 a chunk), whichever of the
                # writes in flight ends first: its checkpoint and later ones never commit
                if crash_on and crash_on * 100 in frame.keys:
                    raise RuntimeError("killed")

            writer.write = crashing  # type: ignore[method-assign,union-attr]
            await service.start(follow=False)
            try:
                return await BatchJob(service, "score", KeyQuery(url, keys),
                                      BatchOptions(chunk_size=100, fresh=fresh)).run()
            finally:
                await service.stop()

    with pytest.raises(RuntimeError, match="killed"):
        await run("results_a", crash_on=4)
    with pytest.raises(ConfigError, match=r"unfinished run of another definition \(writer: "
                       r".*results_a.* → .*results_b.*--fresh"):
        await run("results_b")
    assert query(url, "SELECT count(*) FROM results_b") == [(0,)]
    result = await run("results_b", fresh=True)
    assert (result.resumed_after, result.read, result.written) == (0, 1000, 1000)
    assert query(url, "SELECT count(DISTINCT id), min(id), max(id) FROM results_b") \
        == [(1000, 1, 1000)]
    # the same definition resumes, as before
    with pytest.raises(RuntimeError, match="killed"):
        await run("results_c", crash_on=2)
    result = await run("results_c")
    assert (result.resumed_after, result.read) == (100, 900)


@pytest.mark.parametrize("mapped", [False, True])
async def test_an_array_model_is_scored_from_its_feature_columns(tmp_path: Path,
                                                                 mapped: bool) -> None:
    """A model registered with an array (`input: FP64 [30]`) scores a table of its 30
    feature columns: in the model's order, or in any order with extra columns when
    `features:` maps them."""
    X, clf = cancer()
    data = features(300)
    table = pd.DataFrame(data, columns=X.columns)
    table.insert(0, "id", np.arange(1, 301))
    if mapped:  # another column order, and a column that is no feature rides along
        table = table[["id", *reversed(X.columns)]].assign(region="north")
    url = f"sqlite:///{tmp_path / 'features.db'}"
    engine = sa.create_engine(url)
    table.to_sql("patients", engine, index=False)
    engine.dispose()
    settings = Settings(home=tmp_path / "home")
    with Registry(settings=settings) as reg:
        mv = reg.register("bc", clf, sample_input=X.to_numpy()[:5])
        reg.set_alias("bc", "production", mv.version)
    assert [s.describe() for s in mv.signature.inputs] == ["input: FP64 [30]"]
    listed = ", ".join(f"'{c}'" for c in X.columns)
    path = tmp_path / "modelport.yaml"
    path.write_text(f"""
pipelines:
  - name: score
    model: bc@production
    writer: {{type: memory}}
    outputs: [predictions]
{f"    features: {{input: [{listed}]}}" if mapped else ""}
""")
    config = load_config(path, {})
    with Registry(settings=settings) as reg:
        service = Service(settings, config, reg)
        await service.start(follow=False)
        try:
            result = await BatchJob(service, "score", KeyQuery(url, "SELECT * FROM patients"),
                                    BatchOptions(chunk_size=100, dry_run=False)).run()
            rows = service.pipeline("score").writer.rows  # type: ignore[union-attr]
        finally:
            await service.stop()
    assert (result.read, result.written, result.rejected) == (300, 300, 0)
    expected = clf.predict(pd.DataFrame(data, columns=X.columns))
    assert [rows[k]["predictions"] for k in range(1, 301)] == expected.tolist()
    assert set(rows[1]) == ({"predictions", "region"} if mapped else {"predictions"})


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
async def test_input_files_resume_by_row_offset(tmp_path: Path, suffix: str) -> None:
    X, clf = cancer()
    data = features(700)
    frame = pd.DataFrame(data, columns=X.columns)
    frame.insert(0, "patient", np.arange(100, 800))
    path = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, row_group_size=128)
    settings, config = service_for(tmp_path, "sqlite://")
    with Registry(settings=settings) as reg:
        service = Service(settings, config, reg)
        pipe = service.pipeline("score")
        pipe.writer = CrashingWriter(crash_on=3)
        await service.start(follow=False)
        try:
            options = BatchOptions(chunk_size=200, job_id="file-job")
            source = FileRows(path, key="patient")
            assert source.count(Resume()) == (700 if suffix != ".csv" else None)
            with pytest.raises(RuntimeError):
                await BatchJob(service, "score", source, options).run()
            pipe.writer = MemoryWriter()
            other = tmp_path / "other.csv"
            frame.iloc[:5].to_csv(other, index=False)
            with pytest.raises(ConfigError, match="'file-job' has an unfinished run"):
                await BatchJob(service, "score", FileRows(other, key="patient"), options).run()
            result = await BatchJob(service, "score", FileRows(path, key="patient"),
                                    options).run()
        finally:
            await service.stop()
    assert (result.resumed_after, result.read, result.written) == (400, 300, 300)
    rows = pipe.writer.rows  # type: ignore[attr-defined]
    assert sorted(rows) == list(range(500, 800))
    expected = clf.predict(frame.iloc[400:, 1:]).tolist()
    assert [rows[k]["predictions"] for k in sorted(rows)] == expected


@pytest.mark.postgres
async def test_a_query_of_rows_is_scored_without_lookups_and_resumes(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    X, clf = cancer()
    data = make_patients(pg_url, 2_500)
    copies: list[str] = []
    copy_out = pgcopy.copy_out
    monkeypatch.setattr(pgcopy, "copy_out", lambda cur, q, *a, **k: copies.append(q) or copy_out(
        cur, q, *a, **k))
    settings, config = service_for(tmp_path, pg_url, retriever="null")
    query = "SELECT * FROM patients WHERE id > 100"  # the features: no retriever needed
    with Registry(settings=settings) as reg:
        service = Service(settings, config, reg)
        pipe = service.pipeline("score")
        pipe.writer = CrashingWriter(crash_on=2)
        await service.start(follow=False)
        try:
            options = BatchOptions(chunk_size=1_000, job_id="rows")
            source = KeyQuery(pg_url, query)
            with pytest.raises(RuntimeError, match="killed"):
                await BatchJob(service, "score", source, options).run()
            assert not source.lookup and source.describe().startswith("rows query")
            first = pipe.writer
            pipe.writer = MemoryWriter()
            result = await BatchJob(service, "score", KeyQuery(pg_url, query), options).run()
        finally:
            await service.stop()
    assert (result.resumed_after, result.read, result.rejected) == (1_000, 1_400, 0)
    assert len(copies) == 2 and "WHERE mp_q.id > 1100 ORDER BY" in copies[1]  # the last key
    written = {**first.rows, **pipe.writer.rows}  # type: ignore[attr-defined]
    assert sorted(written) == list(range(101, 2_501))
    expected = clf.predict(pd.DataFrame(data, columns=X.columns))
    assert all(written[k]["predictions"] == expected[k - 1] for k in written)


@pytest.mark.postgres
async def test_rows_with_other_types_come_through_a_cursor(tmp_path: Path, pg_url: str) -> None:
    make_patients(pg_url, 30)
    settings, config = service_for(tmp_path, pg_url, retriever="null")
    with Registry(settings=settings) as reg:
        service = Service(settings, config, reg)
        pipe = service.pipeline("score")
        await service.start(follow=False)
        try:  # not all numbers: no COPY; the text column rides along to the writer
            result = await BatchJob(service, "score", KeyQuery(
                pg_url, "SELECT p.*, 'p' || id AS label FROM patients p"),
                BatchOptions(chunk_size=8)).run()
        finally:
            await service.stop()
    assert (result.read, result.written) == (30, 30)
    rows = pipe.writer.rows  # type: ignore[union-attr]
    assert rows[12]["label"] == "p12" and rows[12]["predictions"] in (0, 1)


async def test_a_sqlite_query_of_rows_pages_in_key_order(tmp_path: Path) -> None:
    X, clf = cancer()
    data = features(250)
    url = f"sqlite:///{tmp_path / 'rows.db'}"
    frame = pd.DataFrame(data, columns=X.columns)
    frame.insert(0, "id", np.arange(250, 0, -1))  # stored in reverse: read in key order
    engine = sa.create_engine(url)
    frame.to_sql("patients", engine, index=False)
    engine.dispose()
    settings, config = service_for(tmp_path, url, retriever="null")
    with Registry(settings=settings) as reg:
        service = Service(settings, config, reg)
        pipe = service.pipeline("score")
        await service.start(follow=False)
        try:
            result = await BatchJob(service, "score", KeyQuery(url, "SELECT * FROM patients"),
                                    BatchOptions(chunk_size=100)).run()
        finally:
            await service.stop()
    assert (result.read, result.written) == (250, 250)
    rows = pipe.writer.rows  # type: ignore[union-attr]
    expected = clf.predict(frame.iloc[:, 1:])
    assert all(rows[k]["predictions"] == expected[250 - k] for k in rows)


@pytest.mark.postgres
def test_keys_come_out_as_the_database_holds_them(pg_url: str) -> None:
    # a NULL among integer keys (binary COPY, read row by row) and NUMERIC keys (a
    # cursor): neither may turn into floats, or lookups, writes and resuming break
    nulls = KeyQuery(pg_url, "SELECT * FROM (VALUES (3), (NULL), (1), (3)) AS t(id)")
    numeric = KeyQuery(pg_url, "SELECT id::numeric(30) AS id, 0.5 AS score FROM "
                               "(VALUES (12345678901234567890)) AS t(id)")
    try:
        nulls.check()
        numeric.check()
        (chunk,) = nulls.chunks(10, Resume())
        (row,) = numeric.chunks(10, Resume())
    finally:
        nulls.close()
        numeric.close()
    assert chunk.frame.keys == [1, 3, None] and chunk.last_key is None
    assert row.frame.keys == [Decimal("12345678901234567890")]
    assert row.frame.columns["score"].tolist() == [0.5]
