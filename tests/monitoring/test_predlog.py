"""The prediction log: sampling, exact traffic counts, never blocking, flushing, and the
hook in the data plane (through the real server routes); its tables on PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sklearn.linear_model import LogisticRegression
from starlette.testclient import TestClient

from modelport import Registry, Service, ServiceConfig, Settings
from modelport.dataplane import ModelConfig
from modelport.monitoring.logstore import LogStore, percentile
from modelport.monitoring.metrics import Metrics
from modelport.monitoring.predlog import PredictionLog
from modelport.server import create_app
from modelport.settings import MonitoringSettings

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC).timestamp()
WIDE = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def make_log(url: str, **config: object) -> PredictionLog:
    plog = PredictionLog(LogStore(url), MonitoringSettings(**config))  # type: ignore[arg-type]
    plog.clock = lambda: T0
    return plog


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'log.db'}"


def row(value: float = 1.0, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full(n, value), "color": np.asarray(["red"] * n, dtype=object)}


def out(n: int = 1) -> dict[str, np.ndarray]:
    return {"score": np.linspace(0, 1, n), "probabilities": np.full((n, 2), 0.5)}


def stored(url: str, table: str = "mp_predictions") -> list[dict[str, object]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.text(f"SELECT * FROM {table}")).mappings()]
    engine.dispose()
    return rows


async def test_samples_rows_at_the_configured_rate_reproducibly(url: str) -> None:
    logs = [make_log(url, sample_rate=0.1, seed=42) for _ in range(2)]
    for plog in logs:
        for i in range(5000):
            plog.record("m", 1, "predict", row(float(i)), out(), 1.0)
    kept = [[float(c.inputs["x"][0]) for c in plog._calls] for plog in logs]  # type: ignore[index]
    assert kept[0] == kept[1], "the same seed keeps the same rows"
    # binomial(5000, 0.1): mean 500, sd 21; five sd either way
    assert 395 <= len(kept[0]) <= 605
    await logs[0].flush()
    rows = stored(url)
    assert len(rows) == len(kept[0])
    assert {r["source"] for r in rows} == {"predict"}
    first = rows[0]
    assert first["model"] == "m" and first["version"] == 1
    assert '"color": "red"' in str(first["inputs"]) or "red" in str(first["inputs"])
    other = make_log(url, sample_rate=0.1, seed=43)
    for i in range(5000):
        other.record("m", 1, "predict", row(float(i)), out(), 1.0)
    assert [float(c.inputs["x"][0]) for c in other._calls] != kept[0]  # type: ignore[index]


async def test_a_batch_call_is_sampled_by_row_and_capped(url: str) -> None:
    plog = make_log(url, sample_rate=0.5, seed=1, max_rows_per_call=30)
    plog.record("m", 1, "pipeline:nightly", row(2.0, 1000), out(1000), 12.0, "rid-1")
    assert plog._buffered == 30
    await plog.flush()
    rows = stored(url)
    assert len(rows) == 30
    assert all(r["request_id"] == "rid-1" and r["latency_ms"] == 12.0 for r in rows)
    (traffic,) = stored(url, "mp_traffic")
    assert traffic["calls"] == 1 and traffic["rows"] == 1000


async def test_traffic_counts_every_call_exactly_per_minute(url: str) -> None:
    plog = make_log(url, sample_rate=0.0)
    expected = {"calls": 0, "rows": 0, "errors": 0}
    rng = np.random.default_rng(0)
    for i in range(1234):
        plog.clock = lambda i=i: T0 + i * 0.5  # ten minutes of calls
        n, ok = int(rng.integers(1, 5)), i % 17 != 0
        plog.record("m", 1 + i % 2, "predict" if i % 3 else "v2_infer", row(1.0, n),
                    out(n) if ok else None, float(rng.uniform(1, 40)))
        expected["calls"] += 1
        expected["rows"] += n
        expected["errors"] += not ok
        if i == 600:
            await plog.flush()  # the second flush adds to rows the first one wrote
    await plog.flush()
    assert stored(url) == [], "sample_rate 0 stores no inputs"
    traffic = stored(url, "mp_traffic")
    for key, value in expected.items():
        assert sum(int(t[key]) for t in traffic) == value  # type: ignore[call-overload]
    assert len({t["minute"] for t in traffic}) == 11  # 617 s from 12:00:00
    assert {(t["version"], t["source"]) for t in traffic} == {
        (1, "predict"), (2, "predict"), (1, "v2_infer"), (2, "v2_infer")}
    read = LogStore(url).traffic(*WIDE)
    p50 = percentile(np.sum([c.buckets for *_, c in read], axis=0).tolist(), 0.5)
    assert p50 is not None and 10 <= p50 <= 40  # uniform 1..40 ms: median about 20


async def test_a_full_buffer_drops_and_counts_instead_of_waiting(url: str) -> None:
    plog = make_log(url, sample_rate=1.0, buffer_size=50)
    metrics = Metrics()
    plog.metrics = metrics
    started = time.perf_counter()
    for _ in range(200):
        plog.record("m", 1, "predict", row(), out(), 1.0)
    assert time.perf_counter() - started < 1.0
    assert plog._buffered == 50 and plog.dropped == 150
    assert metrics.predlog_rows.labels("dropped")._value.get() == 150
    await plog.flush()
    assert len(stored(url)) == 50
    assert sum(int(t["calls"]) for t in stored(url, "mp_traffic")) == 200  # type: ignore[call-overload]


async def test_a_stuck_database_never_slows_recording(url: str) -> None:
    plog = make_log(url, sample_rate=1.0, buffer_size=100, flush_interval_s=0.01)
    entered, release = threading.Event(), threading.Event()
    write = plog.store.write

    def stuck(*args: object) -> None:
        entered.set()
        assert release.wait(60), "the test never released the write"
        write(*args)  # type: ignore[arg-type]

    plog.store.write = stuck  # type: ignore[method-assign]
    await plog.start()
    plog.record("m", 1, "predict", row(), out(), 1.0)
    assert await asyncio.to_thread(entered.wait, 60)  # the flusher is stuck in its thread
    slowest = 0.0
    for _ in range(1000):
        t = time.perf_counter()
        plog.record("m", 1, "predict", row(), out(), 1.0)
        slowest = max(slowest, time.perf_counter() - t)
    assert slowest < 0.05
    assert plog.dropped == 1000 - 100
    stopping = asyncio.create_task(plog.stop())
    await asyncio.sleep(0)  # a turn of the loop: stop() has begun, the write is under way
    assert not stopping.done()  # it waits for the write, rather than lose its rows
    release.set()
    await stopping
    assert len(stored(url)) == 101
    assert sum(int(t["calls"]) for t in stored(url, "mp_traffic")) == 1001  # type: ignore[call-overload]


async def test_stop_flushes_what_is_buffered(url: str) -> None:
    plog = make_log(url, sample_rate=1.0, flush_interval_s=3600)
    await plog.start()
    for i in range(10):
        plog.record("m", 3, "predict", row(float(i)), out(), 2.0, f"r{i}")
    assert stored(url) == []
    await plog.stop()
    rows = stored(url)
    assert sorted(str(r["request_id"]) for r in rows) == [f"r{i}" for i in range(10)]
    assert plog.written == 10


async def test_a_failed_write_loses_samples_but_keeps_traffic_counts(url: str) -> None:
    plog = make_log(url, sample_rate=1.0)
    write, calls = plog.store.write, []

    def flaky(*args: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        write(*args)  # type: ignore[arg-type]

    plog.store.write = flaky  # type: ignore[method-assign]
    for _ in range(5):
        plog.record("m", 1, "predict", row(), out(), 1.0)
    await plog.flush()
    assert plog.failed == 5
    for _ in range(3):
        plog.record("m", 1, "predict", row(), out(), 1.0)
    await plog.flush()
    assert len(stored(url)) == 3
    assert sum(int(t["calls"]) for t in stored(url, "mp_traffic")) == 8  # type: ignore[call-overload]


async def test_an_unreachable_database_does_not_stop_the_log() -> None:
    plog = make_log("postgresql://nobody@127.0.0.1:9/nothing", sample_rate=1.0)  # discard port
    await plog.start()  # logged, retried at each flush
    plog.record("m", 1, "predict", row(), out(), 1.0)
    await plog.stop()
    assert plog.failed == 1
    assert sum(c.calls for c in plog._counts.values()) == 1, "counts kept for a retry"


async def test_large_tensors_are_logged_as_their_shape(url: str) -> None:
    plog = make_log(url, sample_rate=1.0)
    plog.record("img", 1, "v2_infer", {"pixels": np.zeros((2, 32, 32))},
                {"label": np.asarray([3, 4])}, 5.0)
    await plog.flush()
    rows = stored(url)
    assert len(rows) == 2
    assert "32" in str(rows[0]["inputs"]) and "float64" in str(rows[0]["inputs"])
    assert plog.store.samples("img", *WIDE, 10)[0][0]["outputs"] == {"label": 3}


# --- the hook: DataPlane.predict, through the server's routes ----------------------------


@pytest.fixture(scope="module")
def classifier() -> tuple[np.ndarray, LogisticRegression]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    return X, LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))


def test_the_data_plane_logs_every_route_with_request_ids(
        settings: Settings, classifier: tuple[np.ndarray, LogisticRegression]) -> None:
    X, clf = classifier
    settings = settings.model_copy(update={"monitoring": MonitoringSettings(
        sample_rate=1.0, seed=0, flush_interval_s=3600)})
    with Registry(settings=settings) as reg:
        reg.register("clf", clf, sample_input=X[:5])
        service = Service(settings, ServiceConfig(models=[ModelConfig(ref="clf:1")]), reg,
                          follow=False)
        assert service.prediction_log is not None  # monitoring is on by default
        ids = []
        with TestClient(create_app(service)) as client:
            for i in range(12):
                r = client.post("/models/clf/predict", json={"instances": X[i:i + 2].tolist()})
                assert r.status_code == 200, r.text
                ids.append(r.headers["x-request-id"])
            r = client.post("/v2/models/clf/infer", json={"inputs": [
                {"name": "input", "datatype": "FP64", "shape": [1, 3], "data": X[0].tolist()}]})
            assert r.status_code == 200, r.text
        # the app's shutdown stopped the data plane, which flushed the log
        rows = stored(settings.resolved_log_url)
        traffic = stored(settings.resolved_log_url, "mp_traffic")
    assert {(t["source"], t["calls"], t["rows"]) for t in traffic} == {
        ("predict", 12, 24), ("v2_infer", 1, 1)}
    assert len(rows) == 25
    assert {r["request_id"] for r in rows if r["source"] == "predict"} == set(ids)
    assert all(r["model"] == "clf" and r["version"] == 1 for r in rows)


def test_monitoring_off_means_no_log(settings: Settings) -> None:
    off = settings.model_copy(update={"monitoring": MonitoringSettings(enabled=False)})
    assert PredictionLog.from_settings(off) is None
    assert settings.resolved_log_url == settings.resolved_registry_url


# --- the real PostgreSQL --------------------------------------------------------------


@pytest.mark.postgres
async def test_log_tables_on_postgres(pg_url: str) -> None:
    plog = make_log(pg_url, sample_rate=1.0, seed=0)
    await plog.start()
    for i in range(40):
        plog.clock = lambda i=i: T0 + i * 3.0  # two minutes
        plog.record("m", 1, "predict", row(float(i)), out(), 1.0 + i, f"r{i}")
    await plog.flush()
    for _ in range(10):  # the same minute again: the upsert adds
        plog.record("m", 1, "predict", row(), None, 100.0)
    await plog.stop()
    store = LogStore(pg_url)
    try:
        traffic = store.traffic(*WIDE, model="m")
        samples, total = store.samples("m", *WIDE, 1000)
        few, _ = store.samples("m", *WIDE, 10)
        store.ensure()  # tables exist already: a second replica starting is fine
    finally:
        store.close()
    assert sum(c.calls for *_, c in traffic) == 50
    assert sum(c.errors for *_, c in traffic) == 10
    assert [m for m, *_ in traffic] == sorted(m for m, *_ in traffic)
    assert total == 40 and len(samples) == 40
    assert samples[0]["inputs"] == {"x": 0.0, "color": "red"}
    assert samples[0]["outputs"] == {"score": 0.0, "probabilities": [0.5, 0.5]}
    assert samples[0]["ts"] == datetime.fromtimestamp(T0, UTC)
    assert 5 <= len(few) <= 20, "spread over the window, about the limit"
    assert samples[-1]["ts"] - samples[0]["ts"] == timedelta(seconds=117)
