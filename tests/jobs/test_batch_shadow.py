"""A batch job whose model has a shadow and whose pipeline has a `shadow_writer`: the
results table holds the primary's answers and the side table the shadow's, for every
row, each compared, counted and logged once; a shadow that raises leaves the job and
its results whole. In-process, against PostgreSQL."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import shadow_models
import sqlalchemy as sa
from batch_helpers import CrashingWriter, cancer, make_patients, query
from sklearn.tree import DecisionTreeClassifier

from modelport import Registry, Settings
from modelport.config import load_config
from modelport.jobs import BatchJob, BatchOptions, KeyQuery
from modelport.jobs.definition import definition
from modelport.pipeline import MemoryWriter
from modelport.service import Service
from modelport.settings import MonitoringSettings

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROWS, CHUNK = 2000, 300
CHUNKS = -(-ROWS // CHUNK)


def config(tmp_path: Path, url: str, shadow: str) -> Any:
    path = tmp_path / "modelport.yaml"
    path.write_text(f"""
models:
  - ref: cancer@production
    trusted: true
    shadow: {shadow}
pipelines:
  - name: score
    model: cancer@production
    retriever: {{type: sql, url: '${{DB}}', table: patients}}
    writer: {{type: sql, url: '${{DB}}', table: results, create: true}}
    shadow_writer: {{type: sql, url: '${{DB}}', table: results_shadow, create: true}}
    outputs: [predictions]
    version_column: version
""")
    return load_config(path, {"DB": url})


def metric(service: Service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def calls(service: Service, shadow: str, outcome: str) -> float:
    return metric(service, "modelport_shadow_calls_total", model="cancer", shadow=shadow,
                  outcome=outcome)


async def run_job(settings: Settings, cfg: Any, url: str) -> tuple[Service, Any]:
    service = Service(settings, cfg)
    await service.start(follow=False, strict=True)
    try:
        result = await BatchJob(service, "score", KeyQuery(url, "SELECT id FROM patients"),
                                BatchOptions(chunk_size=CHUNK)).run()
    finally:
        await service.stop()
    return service, result


async def test_the_side_table_holds_the_shadows_answer_for_every_row(
        tmp_path: Path, pg_url: str) -> None:
    data = make_patients(pg_url, ROWS)
    X, primary = cancer()
    # a shadow that disagrees on some rows, so the side table cannot pass for the main
    shadow = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, primary.predict(X))
    settings = Settings(home=tmp_path / "home", registry_url=pg_url,
                        monitoring=MonitoringSettings(sample_rate=1.0, flush_interval_s=0.2))
    with Registry(settings=settings) as reg:
        for model, alias in ((primary, "production"), (shadow, "staging")):
            reg.set_alias("cancer", alias,
                          reg.register("cancer", model, sample_input=X[:5]).version)
    cfg = config(tmp_path, pg_url, "cancer@staging")
    service, result = await run_job(settings, cfg, pg_url)

    assert result.read == result.written == ROWS and result.rejected == 0
    frame = pd.DataFrame(data, columns=X.columns)
    want_primary, want_shadow = primary.predict(frame), shadow.predict(frame)
    assert (want_primary != want_shadow).any()
    main = query(pg_url, "SELECT id, predictions, version FROM results ORDER BY id")
    side = query(pg_url, "SELECT id, predictions, version FROM results_shadow ORDER BY id")
    ids = list(range(1, ROWS + 1))
    assert [r.id for r in main] == ids and [r.id for r in side] == ids
    assert [r.predictions for r in main] == want_primary.tolist()
    assert [r.predictions for r in side] == want_shadow.tolist()
    assert {r.version for r in main} == {1} and {r.version for r in side} == {2}
    # each chunk scored by the shadow once (not again in the background), compared
    assert calls(service, "cancer@staging", "compared") == CHUNKS
    assert metric(service, "modelport_shadow_rows_total", model="cancer",
                  shadow="cancer@staging") == ROWS
    agreed = int(np.count_nonzero(want_primary == want_shadow))
    assert metric(service, "modelport_shadow_agreed_rows_total", model="cancer",
                  shadow="cancer@staging") == agreed
    # the prediction log pairs each shadow call with its chunk's primary call
    logged = query(pg_url, "SELECT DISTINCT request_id, version, source FROM mp_predictions "
                           "WHERE model = 'cancer'")
    primary_ids = {r.request_id for r in logged if r.source == "pipeline:score"}
    shadow_ids = {r.request_id for r in logged if r.source == "shadow:pipeline:score"}
    assert len(primary_ids) == len(shadow_ids) == CHUNKS and shadow_ids == primary_ids
    assert {r.version for r in logged if r.source.startswith("shadow:")} == {2}


@pytest.mark.parametrize(("shadow", "switch", "outcome", "reason"), [
    (shadow_models.BreaksLater(), "MP_TEST_SHADOW_BREAKS", "error", "the shadow is broken"),
    (shadow_models.SlowLater(), "MP_TEST_SHADOW_SLOW", "timeout", "no answer within"),
], ids=["raises", "times-out"])
async def test_a_shadow_that_fails_leaves_the_job_and_its_results_whole(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, shadow: Any, switch: str, outcome: str,
        reason: str) -> None:
    make_patients(pg_url, ROWS)  # the results table is made by its writer (create: true)
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE results_shadow (id BIGINT PRIMARY KEY, "
                             "predictions BIGINT, version BIGINT)"))
    engine.dispose()
    X, primary = cancer()
    settings = Settings(home=tmp_path / "home")
    with Registry(settings=settings) as reg:
        reg.set_alias("cancer", "production",
                      reg.register("cancer", primary, sample_input=X[:5]).version)
        reg.register("cancer", shadow, sample_input=X[:5])
    cfg = config(tmp_path, pg_url, "{ref: 'cancer:2', timeout_s: 0.2}")
    service = Service(settings, cfg)
    await service.start(follow=False, strict=True)
    monkeypatch.setenv(switch, "1")  # loaded and smoke-tested: now it fails
    caplog.set_level(logging.WARNING, "modelport.pipeline")
    try:
        result = await BatchJob(service, "score",
                                KeyQuery(pg_url, "SELECT id FROM patients"),
                                BatchOptions(chunk_size=CHUNK)).run()
    finally:
        await service.stop()
    assert result.read == result.written == ROWS and result.exit_code == 0
    main = query(pg_url, "SELECT predictions FROM results ORDER BY id")
    assert [r.predictions for r in main] == primary.predict(
        query_frame(pg_url, X.columns)).tolist()
    assert query(pg_url, "SELECT count(*) FROM results_shadow") == [(0,)]
    assert calls(service, "cancer:2", outcome) == CHUNKS
    assert calls(service, "cancer:2", "compared") == 0
    failures = [r.getMessage() for r in caplog.records if "shadow_writer" in r.getMessage()]
    assert len(failures) == CHUNKS
    assert reason in failures[0]


async def test_a_resumed_job_leaves_one_side_row_per_key(tmp_path: Path, pg_url: str) -> None:
    """Killed part-way, the job is run again: it writes the side again from its last
    checkpoint, and the side table's upsert leaves one right row per key."""
    data = make_patients(pg_url, ROWS)
    X, primary = cancer()
    shadow = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, primary.predict(X))
    settings = Settings(home=tmp_path / "home")
    with Registry(settings=settings) as reg:
        for model, alias in ((primary, "production"), (shadow, "staging")):
            reg.set_alias("cancer", alias,
                          reg.register("cancer", model, sample_input=X[:5]).version)
    service = Service(settings, config(tmp_path, pg_url, "cancer@staging"))
    pipe = service.pipeline("score")
    pipe.writer = CrashingWriter(crash_on=4)
    await service.start(follow=False, strict=True)
    source = KeyQuery(pg_url, "SELECT id FROM patients")
    try:
        with pytest.raises(RuntimeError, match="killed"):
            await BatchJob(service, "score", source, BatchOptions(chunk_size=CHUNK)).run()
        pipe.writer = MemoryWriter()
        result = await BatchJob(service, "score", source, BatchOptions(chunk_size=CHUNK)).run()
    finally:
        await service.stop()
    assert result.resumed_after == 3 * CHUNK and result.read == ROWS - 3 * CHUNK
    want = shadow.predict(pd.DataFrame(data, columns=X.columns)).tolist()
    side = query(pg_url, "SELECT id, predictions FROM results_shadow ORDER BY id")
    assert [tuple(r) for r in side] == [(i + 1, p) for i, p in enumerate(want)]


def query_frame(url: str, columns: Any) -> pd.DataFrame:
    names = ", ".join(f'"{c}"' for c in columns)
    return pd.DataFrame(query(url, f"SELECT {names} FROM patients ORDER BY id"),
                        columns=columns)


async def test_the_shadow_writer_is_part_of_the_jobs_definition(
        tmp_path: Path, pg_url: str) -> None:
    """Another side table (or shadow) is another job: a run never resumes across it."""
    X, primary = cancer()
    settings = Settings(home=tmp_path / "home")
    with Registry(settings=settings) as reg:
        for alias in ("production", "staging"):
            reg.set_alias("cancer", alias,
                          reg.register("cancer", primary, sample_input=X[:5]).version)
    service = Service(settings, config(tmp_path, pg_url, "cancer@staging"))
    text = definition(service, "score")
    assert '"shadow":"cancer@staging"' in text and '"table":"results_shadow"' in text
    service.config.pipelines[0].shadow_writer = None
    service.pipelines["score"].shadow_writer = None
    assert "shadow" not in definition(service, "score")
