"""`modelport batch` against a real PostgreSQL: scoring, resuming after SIGKILL,
rejects, dry runs, input files and one-line errors, run as users run it."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batch_helpers import (
    cancer,
    features,
    make_patients,
    make_results,
    modelport,
    query,
    register,
    start,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    register(home)
    return home


def predictions(url: str) -> dict[int, int]:
    return dict(query(url, "SELECT id, predictions FROM results"))  # type: ignore[arg-type]


def expected(data: np.ndarray, first_id: int = 1) -> dict[int, int]:
    X, clf = cancer()
    preds = clf.predict(pd.DataFrame(data, columns=X.columns))
    return {first_id + i: int(p) for i, p in enumerate(preds)}


def test_batch_scores_every_key_once(home: Path, tmp_path: Path, pg_url: str) -> None:
    data = make_patients(pg_url, 20_000)
    make_results(pg_url)
    config = write_config(tmp_path / "modelport.yaml", pg_url, chunk_size=2000)
    r = modelport(home, pg_url, "batch", "score", "-c", str(config), "--job-id", "nightly",
                  "--keys", "SELECT id FROM patients;")
    assert r.code == 0, r.err
    assert "read                   20,000 rows" in r.out
    assert "rejected                    0 rows" in r.out
    assert "rows/s" in r.out
    assert predictions(pg_url) == expected(data)
    [cp] = query(pg_url, "SELECT status, chunks, rows_read, rows_written, run "
                         "FROM mp_batch_checkpoints")
    assert tuple(cp) == ("done", 10, 20_000, 20_000, 1)
    # a finished job run again starts a new run (a nightly job), not a no-op
    again = modelport(home, pg_url, "batch", "score", "-c", str(config), "--job-id", "nightly",
                      "--keys", "SELECT id FROM patients WHERE id <= 10")
    assert again.code == 0, again.err
    assert query(pg_url, "SELECT job_id, run, rows_read, status FROM mp_batch_checkpoints") \
        == [("nightly", 2, 10, "done")]


def test_batch_killed_mid_run_resumes_after_the_last_checkpoint(
        home: Path, tmp_path: Path, pg_url: str) -> None:
    data = make_patients(pg_url, 20_000)
    make_results(pg_url)
    config = write_config(tmp_path / "modelport.yaml", pg_url, chunk_size=500,
                          pre="batch_helpers:slow")
    args = ("batch", "score", "-c", str(config), "--keys", "SELECT id FROM patients")

    def committed() -> int:
        try:
            rows = query(pg_url, "SELECT chunks FROM mp_batch_checkpoints")
        except Exception:  # the table is created by the job
            return 0
        return int(rows[0][0]) if rows else 0

    proc = start(home, pg_url, *args)
    try:
        wait_for(lambda: committed() >= 8 or proc.poll() is not None, 90, "8 checkpoints")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    done_before = query(pg_url, "SELECT rows_read, status FROM mp_batch_checkpoints")[0]
    assert 4000 <= done_before[0] < 20_000 and done_before[1] == "running"
    written_before = len(predictions(pg_url))
    assert written_before >= done_before[0]  # a write may be ahead of its checkpoint

    again = modelport(home, pg_url, *args)
    assert again.code == 0, again.err
    read_again = 20_000 - done_before[0]  # fewer rows read than in the whole job
    assert re.search(rf"read +{read_again:,} rows \(resumed after {done_before[0]:,}\)",
                     again.out), again.out
    assert predictions(pg_url) == expected(data)  # exactly one row per key, all right
    [cp] = query(pg_url, "SELECT status, rows_read, rows_written FROM mp_batch_checkpoints")
    assert tuple(cp) == ("done", 20_000, 20_000)


def test_rejected_rows_land_in_the_rejects_table_with_reasons(
        home: Path, tmp_path: Path, pg_url: str) -> None:
    data = make_patients(pg_url, 3000)
    make_results(pg_url)
    query(pg_url, 'SELECT 1')
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text('UPDATE patients SET "mean radius" = NULL WHERE id IN (7, 1500)'))
        conn.execute(sa.text("CREATE TABLE wanted AS SELECT id FROM patients "
                             "UNION ALL SELECT 99999 UNION ALL SELECT 7"))  # 7 twice, 99999 absent
    engine.dispose()
    config = write_config(tmp_path / "modelport.yaml", pg_url, chunk_size=1000)
    r = modelport(home, pg_url, "batch", "score", "-c", str(config),
                  "--keys", "SELECT id FROM wanted")
    assert r.code == 3, r.err
    assert "rejected                    3 rows → table results_rejects" in r.out
    assert "warning: 3 rows rejected" in r.err
    rejects = {int(k): (reason, payload) for k, reason, payload in query(
        pg_url, "SELECT key, reason, payload FROM results_rejects")}
    assert set(rejects) == {7, 1500, 99999}
    assert "mean radius" in rejects[7][0] and json.loads(rejects[7][1])["mean radius"] is None
    assert rejects[99999] == ("no data for key 99999", None)
    want = expected(data)
    del want[7], want[1500]
    assert predictions(pg_url) == want


def test_dry_run_writes_nothing(home: Path, tmp_path: Path, pg_url: str) -> None:
    make_patients(pg_url, 1500)
    make_results(pg_url)
    config = write_config(tmp_path / "modelport.yaml", pg_url, chunk_size=500)
    r = modelport(home, pg_url, "batch", "score", "-c", str(config), "--dry-run",
                  "--keys", "SELECT id FROM patients")
    assert r.code == 0, r.err
    assert "dry run" in r.out and "would be written        1,500 rows" in r.out
    assert predictions(pg_url) == {}
    assert query(pg_url, "SELECT to_regclass('mp_batch_checkpoints')") == [(None,)]


def test_input_csv_rows_are_scored_without_lookups(home: Path, tmp_path: Path,
                                                   pg_url: str) -> None:
    X, _ = cancer()
    data = features(2000)
    frame = pd.DataFrame(data, columns=X.columns)
    frame.insert(0, "id", np.arange(1, 2001))
    frame.loc[10, "mean texture"] = np.nan
    frame.to_csv(tmp_path / "rows.csv", index=False)
    make_results(pg_url)
    config = write_config(tmp_path / "modelport.yaml", pg_url)
    rejects = tmp_path / "rejects.jsonl"
    r = modelport(home, pg_url, "batch", "score", "-c", str(config), "--input",
                  str(tmp_path / "rows.csv"), "--chunk-size", "300", "--rejects", str(rejects))
    assert r.code == 3, r.err
    [line] = rejects.read_text().splitlines()
    reject = json.loads(line)
    assert reject["key"] == 11 and "mean texture" in reject["reason"]
    want = expected(data)
    del want[11]
    assert predictions(pg_url) == want


def test_errors_are_one_line(home: Path, tmp_path: Path, pg_url: str) -> None:
    make_patients(pg_url, 10)
    config = write_config(tmp_path / "modelport.yaml", pg_url)
    cases = {
        ("nope", "--keys", "SELECT id FROM patients"): "no pipeline named 'nope'",
        ("score", "--keys", "SELEKT id FROM patients"): "keys query failed: syntax error",
        ("score", "--keys", "SELECT id FROM nosuch"): 'relation "nosuch" does not exist',
        ("score", "--keys", "SELECT 1", "--input", "x.csv"): "either --keys or --input",
        ("score",): "give the keys to score",
        ("score", "--input", str(tmp_path / "no.csv")): "no.csv: no such file",
    }
    for args, message in cases.items():
        r = modelport(home, pg_url, "batch", args[0], "-c", str(config), *args[1:])
        lines = r.err.strip().splitlines()
        assert r.code == 1 and len(lines) == 1 and message in lines[0], (args, r.err)


def test_a_missing_table_is_one_line_before_any_progress(home: Path, tmp_path: Path,
                                                         pg_url: str) -> None:
    make_patients(pg_url, 10)  # no results table, and the writer does not create it
    config = write_config(tmp_path / "modelport.yaml", pg_url)
    r = modelport(home, pg_url, "batch", "score", "-c", str(config),
                  "--keys", "SELECT id FROM patients")
    assert r.code == 1 and r.out == "", r.out
    [line] = r.err.strip().splitlines()
    assert line.startswith("error: pipeline score: ") and "has no table results" in line


def test_the_summary_is_aligned_in_plurals_with_the_progress_bars_rate(
        home: Path, tmp_path: Path, pg_url: str) -> None:
    make_patients(pg_url, 2001)
    make_results(pg_url)
    query(pg_url, "SELECT 1")
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:  # one reject, with a reason longer than a line
        conn.execute(sa.text('UPDATE patients SET "mean radius" = NULL WHERE id = 7'))
    engine.dispose()
    config = write_config(tmp_path / "modelport.yaml", pg_url, chunk_size=500)
    for dry in ([], ["--dry-run"]):
        r = modelport(home, pg_url, "batch", "score", "-c", str(config), *dry,
                      "--keys", "SELECT id FROM patients", COLUMNS="60")
        assert r.code == 3, r.err  # the row with a NULL is rejected, dry run or not
        lines = r.out.splitlines()[1:]
        counts = [ln for ln in lines if re.match(r"  \S", ln)]
        assert [ln.split()[0] for ln in counts] == ["read", "would" if dry else "written",
                                                     "rejected", "time"]
        # the numbers end in one column, whatever the label
        ends = {re.search(r"\d(?=\s+(rows?|s)\b)", ln).end() for ln in counts}  # type: ignore[union-attr]
        assert len(ends) == 1, r.out
        assert re.search(r"(?<![\d,])1 row\b", r.out)
        assert not re.search(r"(?<![\d,])1 rows", r.out + r.err)
        # the reason wraps at spaces only: every word of it is whole
        reason = " ".join(" ".join(ln.split()) for ln in lines if not re.match(r"  \S", ln))
        assert "1 x " in reason and "'mean radius'" in reason, r.out
        # the progress bar's final rate is the summary's
        [summary] = re.findall(r"\(([\d,]+) rows/s\)", r.out)
        bar = re.findall(r"2001/2001 ([\d,]+)", r.err)  # then "rows/s" (wrapped at 60)
        assert bar and bar[-1] == summary, (r.err, r.out)
