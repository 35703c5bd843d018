"""Reports: the HTML (sections, charts, versions' metrics, a PSI table that flags the
shifted feature only), the summary, time windows, the webhook (retries on a mock
transport and a real socket), the scheduler's job, and `modelport report` as a user
runs it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modelport import Registry, Settings
from modelport.errors import ConfigError, InvalidInput, WebhookError
from modelport.jobs.report import (
    Report,
    generate,
    parse_time,
    report_job,
    step_for,
    window,
)
from modelport.jobs.webhook import post_json
from modelport.monitoring.predlog import PredictionLog
from modelport.settings import MonitoringSettings

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
SINCE, UNTIL = T0, T0 + timedelta(hours=3)
COLORS = np.asarray(["red", "green", "blue"], dtype=object)


def applicants(n: int, rng: np.random.Generator, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"f_shift": rng.normal(10 + shift, 2, n),
                         "f_stable": rng.normal(0, 1, n),
                         "color": rng.choice(COLORS, n, p=[0.5, 0.3, 0.2])})


async def fill_log(settings: Settings, *, start: float, calls: int, shift_v2: float) -> None:
    """`calls` one-row predictions per version: version 1 for the first half of the
    window, version 2 (with f_shift moved by `shift_v2`) for the second."""
    rng = np.random.default_rng(5)
    plog = PredictionLog.from_settings(settings)
    assert plog is not None
    await plog.start()
    for version in (1, 2):
        frame = applicants(calls, rng, shift_v2 if version == 2 else 0.0)
        for i in range(calls):
            plog.clock = lambda i=i, v=version: start + (v - 1) * 5400 + i * 5400 / calls
            inputs = {k: frame[k].to_numpy()[i:i + 1] for k in frame.columns}
            p = float(rng.uniform())
            plog.record("credit", version, "predict", inputs,
                        {"predictions": np.asarray([int(p > 0.7)]),
                         "probabilities": np.asarray([[1 - p, p]])},
                        float(rng.uniform(2, 30)), f"req-{version}-{i}")
    await plog.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with two versions of `credit` and three hours of logged traffic."""
    home = tmp_path_factory.mktemp("report") / "home"
    settings = Settings(home=home, monitoring=MonitoringSettings(sample_rate=0.5, seed=3))
    rng = np.random.default_rng(0)
    train = applicants(2000, rng)
    y = (train.f_shift + rng.normal(0, 2, 2000) > 10).astype(int)
    pre = ColumnTransformer([("cat", OneHotEncoder(), ["color"])], remainder="passthrough")
    with Registry(settings=settings) as reg:
        for c, auc in ((0.1, 0.81), (1.0, 0.84)):
            clf = make_pipeline(pre, LogisticRegression(C=c)).fit(train, y)
            reg.register("credit", clf, sample_input=train[:5], reference_data=train,
                         metrics={"auc": auc, "rows": 2000}, trusted=True)
        reg.set_alias("credit", "production", 2)
    asyncio.run(fill_log(settings, start=T0.timestamp(), calls=800, shift_v2=4.0))
    return home


@pytest.fixture(scope="module")
def made(home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, str]:
    out = tmp_path_factory.mktemp("out") / "report.html"
    report = generate(Settings(home=home), SINCE, UNTIL, out)
    return report, out.read_text()


def psi_rows(html: str, version: int) -> dict[str, tuple[float, str]]:
    section = html.split(f"<h4>Version {version}:")[1].split("<h4>")[0]
    found = re.findall(r"<tr><td>([^<]+)</td>.*?<td class=num>([0-9.]+)</td>"
                       r'<td><span class="badge \w+">([^<]+)</span>', section)
    return {name: (float(psi), level) for name, psi, level in found}


def test_the_report_has_every_section_with_real_charts(made: tuple[Report, str]) -> None:
    _, html = made
    for heading in ("Predictions served", "Outputs over time",
                    "Versions and their registered metrics",
                    "Input drift against the registration profile"):
        assert f">{heading}</h3>" in html
    images = re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', html)
    assert len(images) >= 8  # calls, latency, 2 outputs, metrics, drift charts
    svg = base64.b64decode(images[0]).decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "Calls per 5 minutes" in svg and "time (UTC)" in svg
    assert "http://" not in html.replace("http://www.w3.org", ""), "nothing fetched"
    assert "<script" not in html


def test_the_report_lists_every_version_with_its_metrics(made: tuple[Report, str]) -> None:
    report, html = made
    table = html.split("Versions and their registered metrics")[1].split("</table>")[0]
    assert re.search(r"<td>2</td>.*?production.*?0\.84", table)
    assert re.search(r"<td>1</td>.*?0\.81", table)
    assert report.models[0].served == [2, 1]


def test_the_psi_table_flags_the_shifted_feature_only(made: tuple[Report, str]) -> None:
    report, html = made
    shifted, before = psi_rows(html, 2), psi_rows(html, 1)
    assert shifted["f_shift"][1] == "drift" and shifted["f_shift"][0] > 0.25
    assert shifted["f_stable"][1] == "stable" and shifted["f_stable"][0] < 0.1
    assert shifted["color"][1] == "stable"
    assert before["f_shift"][1] == "stable", "version 1 saw the reference distribution"
    summary = report.summary()["models"][0]
    assert summary["drift"]["version"] == 2
    assert summary["drift"]["drift"] == ["f_shift"] and summary["drift"]["shift"] == []


def test_traffic_numbers_are_exact(made: tuple[Report, str]) -> None:
    report, html = made
    (m,) = report.models
    assert (m.total.calls, m.total.rows, m.total.errors) == (1600, 1600, 0)
    assert m.step == 300 and len(m.buckets) == 36
    assert sum(m.calls[1]) == 800 and sum(m.calls[2]) == 800
    assert 500 < m.sampled < 1100  # half of 1600, sampled
    summary = report.summary(Path("r.html"))
    assert summary["models"][0]["calls"] == 1600 and summary["report"] == "r.html"
    assert 2 <= summary["models"][0]["latency_ms"]["p50"] <= 30
    assert "credit: 1,600 calls" in summary["text"] and "drift in f_shift" in summary["text"]
    assert ">1,600<" in html


def test_an_empty_window_says_so(home: Path, tmp_path: Path) -> None:
    report = generate(Settings(home=home), T0 - timedelta(days=2), T0 - timedelta(days=1),
                      tmp_path / "empty.html")
    assert report.models == []
    assert "No predictions" in (tmp_path / "empty.html").read_text()
    assert report.summary()["text"].endswith("no predictions")


def test_windows() -> None:
    now = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_time("24h", now) == now - timedelta(hours=24)
    assert parse_time("7d", now) == now - timedelta(days=7)
    assert parse_time("90m", now) == now - timedelta(minutes=90)
    assert parse_time("2025-04-30", now) == datetime(2025, 4, 30, tzinfo=UTC)
    assert parse_time("2025-04-30T08:00:00+02:00", now).hour == 8
    assert window("7d", "2025-05-01", now) == (datetime(2025, 4, 24, tzinfo=UTC),
                                               datetime(2025, 5, 1, tzinfo=UTC))
    assert step_for(*window("24h", None, now)) == 3600, "a day: calls per hour"
    assert step_for(*window("7d", None, now)) == 3 * 3600
    assert step_for(*window("90d", None, now)) == 86400
    with pytest.raises(InvalidInput, match="neither a duration"):
        parse_time("yesterday", now)
    with pytest.raises(InvalidInput, match="empty"):
        window("2025-06-01", "2025-05-01", now)


# --- the webhook -------------------------------------------------------------------


def answers(*statuses: int) -> tuple[httpx.MockTransport, list[Any]]:
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = statuses[min(len(seen) - 1, len(statuses) - 1)]
        if status == 0:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(status, text="slow down" if status >= 400 else "ok")

    return httpx.MockTransport(handler), seen


async def test_webhook_retries_what_may_pass() -> None:
    transport, seen = answers(0, 503, 429, 200)
    status = await post_json("https://hooks.example/T/secret", {"a": 1}, backoff=0.001,
                             transport=transport)
    assert status == 200 and len(seen) == 4
    assert seen[-1].headers["content-type"] == "application/json"
    assert seen[-1].read() == b'{"a":1}' or b'"a"' in seen[-1].read()


async def test_webhook_gives_up_with_a_clear_error_that_hides_the_secret() -> None:
    transport, seen = answers(500)
    with pytest.raises(WebhookError, match=r"https://hooks.example/… failed after 3 "
                                           r"attempts: HTTP 500") as info:
        await post_json("https://hooks.example/T/secret", {}, retries=2, backoff=0.001,
                        transport=transport)
    assert "secret" not in str(info.value) and len(seen) == 3


async def test_webhook_does_not_retry_a_refusal() -> None:
    transport, seen = answers(404)
    with pytest.raises(WebhookError, match="refused"):
        await post_json("https://hooks.example/x", {}, backoff=0.001, transport=transport)
    assert len(seen) == 1
    with pytest.raises(ConfigError, match="not an http"):
        await post_json("ftp://hooks.example/x", {})


@contextlib.contextmanager
def hook_server() -> Iterator[tuple[str, list[Any]]]:
    """A webhook on a loopback socket: 503 the first time, then records what it gets."""
    received: list[Any] = []
    calls = []

    async def hook(request: Request) -> JSONResponse:
        calls.append(1)
        if len(calls) == 1:
            return JSONResponse({"error": "warming up"}, status_code=503)
        received.append(await request.json())
        return JSONResponse({"ok": True})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        Starlette(routes=[Route("/hook/token", hook, methods=["POST"])]),
        log_config=None, access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}/hook/token", received
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


async def test_webhook_on_a_real_socket(made: tuple[Report, str]) -> None:
    report, _ = made
    with hook_server() as (url, received):
        await post_json(url, report.summary(Path("report.html")), backoff=0.01)
    assert len(received) == 1
    assert received[0]["models"][0]["name"] == "credit"
    assert received[0]["models"][0]["drift"]["drift"] == ["f_shift"]


async def test_report_job_for_the_scheduler(tmp_path: Path, home: Path) -> None:
    settings = Settings(home=tmp_path / "home", registry_url=Settings(
        home=home).resolved_registry_url, monitoring=MonitoringSettings(sample_rate=1.0))
    await fill_log(settings, start=time.time() - 3 * 5400, calls=5, shift_v2=0.0)
    with hook_server() as (url, received):
        job = report_job(settings, period="6h", out=tmp_path / "r-{model}-{until:%Y}.html",
                         webhook=url)
        await job()
    written = tmp_path / f"r-all-{datetime.now(UTC):%Y}.html"
    assert "credit" in written.read_text()
    assert received[0]["models"][0]["calls"] == 10
    assert job.__name__ == "report_all"
    with pytest.raises(InvalidInput):
        report_job(settings, period="daily")


# --- the command ---------------------------------------------------------------------


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["MODELPORT_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "modelport", "report", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_modelport_report_writes_the_file(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "report.html"
    proc = run_cli(home, "--model", "credit", "--since", SINCE.isoformat(),
                   "--until", UNTIL.isoformat(), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr and "credit: 1,600 calls" in proc.stdout
    assert "findfont" not in proc.stderr
    assert "<h1>Model report</h1>" in out.read_text()


def test_modelport_report_exit_code_says_the_webhook_failed(home: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    out = tmp_path / "report.html"
    proc = run_cli(home, "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(),
                   "--out", str(out), "--webhook", f"http://127.0.0.1:{port}/x",
                   "--retries", "0")
    assert proc.returncode == 1
    assert "webhook http://127.0.0.1" in proc.stderr and "ConnectError" in proc.stderr
    assert f"written to {out}" in proc.stderr.replace("\n", "")
    assert out.exists()
    bad = run_cli(home, "--since", "yesterday")
    assert bad.returncode == 1 and "neither a duration" in bad.stderr
