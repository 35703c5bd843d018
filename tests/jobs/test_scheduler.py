"""The scheduler: cron firing on a fake clock, no overlapping runs, metrics; one real
every-second schedule; pipelines' batch jobs; and `modelport schedule` as a process."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import signal
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from batch_helpers import cancer, features, query, register, start, wait_for

from modelport import Registry, Settings
from modelport.config import load_config
from modelport.errors import ConfigError
from modelport.jobs.scheduler import Scheduler, add_pipeline_batches
from modelport.monitoring.metrics import Metrics
from modelport.service import Service
from waiting import until

T0 = datetime(2026, 1, 1, 10, 0, 30, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return datetime(2026, 1, 1, 10, 0, tzinfo=UTC) + timedelta(minutes=minutes)


def count(metrics: Metrics, job: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "modelport_job_runs_total", {"job": job, "outcome": outcome})
    return value or 0.0


async def test_jobs_fire_on_their_cron_times_with_a_fake_clock() -> None:
    runs: list[str] = []

    async def job() -> None:
        runs.append("ran")

    metrics = Metrics()
    scheduler = Scheduler(metrics=metrics, clock=lambda: T0)
    scheduler.add("every-5-min", "*/5 * * * *", job)
    assert scheduler.next_fire() == at(5)
    assert scheduler.run_pending(at(4.99)) == []
    assert scheduler.run_pending(at(5)) == ["every-5-min"]
    await scheduler.drain(5)
    assert runs == ["ran"]
    assert count(metrics, "every-5-min", "success") == 1
    assert metrics.registry.get_sample_value(
        "modelport_job_last_success_timestamp_seconds", {"job": "every-5-min"})
    # down for an hour: the missed fire times coalesce into one run, then back on time
    assert scheduler.run_pending(at(67)) == ["every-5-min"]
    await scheduler.drain(5)
    assert runs == ["ran", "ran"] and scheduler.next_fire() == at(70)


async def test_a_job_still_running_is_skipped_not_overlapped(caplog) -> None:
    release = asyncio.Event()
    started = 0

    async def slow() -> None:
        nonlocal started
        started += 1
        await release.wait()

    metrics = Metrics()
    scheduler = Scheduler(metrics=metrics, clock=lambda: T0)
    scheduler.add("slow", "* * * * *", slow)
    scheduler.run_pending(at(1))
    await until(lambda: started == 1, what="the first run begun")
    with caplog.at_level(logging.WARNING, "modelport.jobs.scheduler"):
        assert scheduler.run_pending(at(2)) == []
    assert "job slow still running: skipped" in caplog.text
    assert count(metrics, "slow", "skipped") == 1 and started == 1
    release.set()
    await scheduler.drain(5)
    assert scheduler.run_pending(at(3)) == ["slow"]
    await scheduler.drain(5)
    assert started == 2 and count(metrics, "slow", "success") == 2


async def test_a_failing_run_is_logged_and_counted_and_the_schedule_goes_on(caplog) -> None:
    async def broken() -> None:
        raise RuntimeError("database on fire")

    metrics = Metrics()
    scheduler = Scheduler(metrics=metrics, clock=lambda: T0)
    scheduler.add("broken", "* * * * *", broken)
    with caplog.at_level(logging.ERROR, "modelport.jobs.scheduler"):
        scheduler.run_pending(at(1))
        await scheduler.drain(5)
    assert "job broken failed: database on fire" in caplog.text
    assert count(metrics, "broken", "failure") == 1
    assert scheduler.run_pending(at(2)) == ["broken"]
    await scheduler.drain(5)


def test_bad_cron_expressions_and_duplicate_names_are_config_errors() -> None:
    async def job() -> None:
        return None

    scheduler = Scheduler()
    with pytest.raises(ConfigError, match=r"job 'x': 'every day' is not a cron expression"):
        scheduler.add("x", "every day", job)
    scheduler.add("x", "0 3 * * *", job)
    with pytest.raises(ConfigError, match="two scheduled jobs are named 'x'"):
        scheduler.add("x", "0 4 * * *", job)


def test_the_next_three_fire_times_show_what_an_expression_means() -> None:
    async def job() -> None:
        return None

    scheduler = Scheduler(clock=lambda: datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC))
    every_30_s = scheduler.add("a", "* * * * * */30", job)  # seconds are the 6th field
    assert [t.strftime("%H:%M:%S") for t in every_30_s.upcoming()] == [
        "12:00:30", "12:01:00", "12:01:30"]
    # the first field is minutes: fires every second of minutes :00 and :30
    misread = scheduler.add("b", "*/30 * * * * *", job)
    assert [t.strftime("%H:%M:%S") for t in misread.upcoming()] == [
        "12:00:06", "12:00:07", "12:00:08"]


async def test_the_every_30_seconds_expression_in_the_docs_fires_every_30_seconds() -> None:
    # croniter reads six fields with seconds last: `*/30 * * * * *` would fire every
    # second of minutes :00 and :30, which the page once advertised as every 30 seconds
    page = (Path(__file__).parents[2] / "docs" / "batch.md").read_text()
    documented = re.findall(r"`([^`]+)`: every 30 seconds", page)
    assert len(documented) == 1, "docs/batch.md shows one every-30-seconds expression"

    async def job() -> None:
        return None

    scheduler = Scheduler(clock=lambda: T0)  # 10:00:30
    scheduler.add("half-minute", documented[0], job)
    fires = [scheduler.jobs["half-minute"].next_at]
    for _ in range(3):
        assert scheduler.run_pending(fires[-1]) == ["half-minute"]
        await scheduler.drain(5)
        fires.append(scheduler.jobs["half-minute"].next_at)
    assert fires == [T0 + timedelta(seconds=30 * i) for i in range(1, 5)]


async def test_a_real_every_second_schedule_runs_repeatedly() -> None:
    times: list[float] = []

    async def tick() -> None:
        times.append(asyncio.get_running_loop().time())

    scheduler = Scheduler()
    scheduler.add("tick", "* * * * * */1", tick)  # six fields: seconds last
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(2.6, stop.set)
    await scheduler.run_forever(stop)
    await scheduler.drain(1)
    assert len(times) >= 2
    assert all(0.5 < b - a < 1.5 for a, b in itertools.pairwise(times))


# --- pipelines' batch jobs ----------------------------------------------------------

def sqlite_db(tmp_path: Path, n: int = 300) -> str:
    X, _ = cancer()
    url = f"sqlite:///{tmp_path / 'data.db'}"
    frame = pd.DataFrame(features(n), columns=X.columns)
    frame.insert(0, "id", range(1, n + 1))
    engine = sa.create_engine(url)
    frame.to_sql("patients", engine, index=False)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE results (id INTEGER PRIMARY KEY, "
                             "predictions INTEGER NOT NULL)"))
    engine.dispose()
    return url


def scheduled_config(tmp_path: Path, url: str, cron: str) -> Path:
    path = tmp_path / "modelport.yaml"
    path.write_text(f"""
pipelines:
  - name: nightly
    model: cancer@production
    retriever: {{type: sql, url: '{url}', table: patients}}
    writer: {{type: sql, url: '{url}', table: results}}
    outputs: [predictions]
    schedule: '{cron}'
    keys: SELECT id FROM patients
    chunk_size: 100
  - name: on-demand
    model: cancer@production
""")
    return path


async def test_scheduled_pipeline_runs_its_batch_job(tmp_path: Path) -> None:
    url = sqlite_db(tmp_path)
    settings = Settings(home=tmp_path / "home")
    register(settings.home)
    config = load_config(scheduled_config(tmp_path, url, "0 2 * * *"), {})
    with Registry(settings=settings) as reg:
        service = Service(settings, config, reg)
        await service.start(follow=False)
        try:
            scheduler = Scheduler(metrics=service.dataplane.metrics, clock=lambda: T0)
            assert add_pipeline_batches(scheduler, service) == ["nightly"]
            assert scheduler.next_fire() == datetime(2026, 1, 2, 2, 0, tzinfo=UTC)
            assert scheduler.run_pending(datetime(2026, 1, 2, 2, 0, tzinfo=UTC)) == ["nightly"]
            await scheduler.drain(60)
        finally:
            await service.stop()
    assert count(service.dataplane.metrics, "nightly", "success") == 1
    assert query(url, "SELECT count(*), count(DISTINCT id) FROM results") == [(300, 300)]
    assert query(url, "SELECT status, rows_read FROM mp_batch_checkpoints") == [("done", 300)]


def test_schedule_without_keys_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "modelport.yaml"
    path.write_text("pipelines:\n  - {name: p, model: m@production, schedule: '0 * * * *'}\n")
    service = Service(Settings(home=tmp_path), load_config(path, {}), None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'p' has a schedule but no keys"):
        add_pipeline_batches(Scheduler(), service)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_modelport_schedule_runs_jobs_serves_metrics_and_stops_on_sigterm(
        tmp_path: Path) -> None:
    url = sqlite_db(tmp_path)
    home = tmp_path / "home"
    register(home)
    config = scheduled_config(tmp_path, url, "* * * * * */2")
    port = free_port()
    proc = start(home, url, "schedule", "-c", str(config), "--metrics-port", str(port))

    def succeeded() -> bool:
        assert proc.poll() is None, proc.communicate()
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        except httpx.TransportError:
            return False
        return 'modelport_job_runs_total{job="nightly",outcome="success"}' in text

    try:
        wait_for(succeeded, 90, "a successful scheduled run")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "nightly: '* * * * * */2' (UTC), next at " in err
    assert '"msg": "job nightly finished' in err.replace('":"', '": "')  # JSON log lines
    assert query(url, "SELECT count(*), count(DISTINCT id) FROM results") == [(300, 300)]


@pytest.mark.parametrize(("change", "message"), [
    (("cancer@production", "cancer@nope"), "error: model cancer@nope: "),
    (("table: results", "table: absent"), "error: pipeline nightly: SQL database sqlite:"),
])
def test_what_cannot_run_is_said_at_start_not_at_the_first_fire_time(
        tmp_path: Path, change: tuple[str, str], message: str) -> None:
    url = sqlite_db(tmp_path)
    home = tmp_path / "home"
    register(home)
    config = scheduled_config(tmp_path, url, "0 2 * * *")
    config.write_text(config.read_text().replace(*change))
    proc = start(home, url, "schedule", "-c", str(config))
    _, err = proc.communicate(timeout=60)
    said = [line for line in err.splitlines() if not line.startswith("{")]
    assert proc.returncode == 1 and said[-1].startswith(message), err
