"""Traffic policies against a real registry and prediction log (PostgreSQL), over HTTP:
a shadow never changes or slows what callers get, a canary answers its share (sticky
per key), and both change live through the admin API and `modelport traffic`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import toy_models
from starlette.testclient import TestClient
from test_process import free_port

from modelport import ModelConfig, Registry, Service, ServiceConfig
from modelport.jobs.report import build_report
from modelport.jobs.report_html import render_html
from modelport.monitoring.logstore import LogStore
from modelport.security import KeyStore, add_key
from modelport.server import create_app
from modelport.settings import MonitoringSettings, Settings
from waiting import wait_for

SAMPLE = np.ones((2, 3))


@pytest.fixture
def settings(tmp_path: Path, pg_url: str) -> Settings:
    """Registry and prediction log on PostgreSQL; every row of the log kept."""
    return Settings(home=tmp_path / "home", registry_url=pg_url,
                    monitoring=MonitoringSettings(sample_rate=1.0, flush_interval_s=0.2))


@pytest.fixture
def reg(settings: Settings) -> Iterator[Registry]:
    """`m`: 1 doubles (production), 2 doubles too (staging), 3 triples (candidate);
    `bad` raises once TOY_RAISE is set, `slow` sleeps 1 s once TOY_SLEEP is."""
    with Registry(settings=settings) as registry:
        for model, alias in ((toy_models.Doubler(), "production"),
                             (toy_models.Doubler(), "staging"),
                             (toy_models.Tripler(), "candidate")):
            version = registry.register("m", model, sample_input=SAMPLE).version
            registry.set_alias("m", alias, version)
        registry.register("bad", toy_models.Raises(), sample_input=SAMPLE)
        registry.register("slow", toy_models.Sleeps(), sample_input=SAMPLE)
        yield registry


def served(**policy: Any) -> ServiceConfig:
    return ServiceConfig(models=[ModelConfig(ref="m@production", trusted=True, **policy)])


def metric(service: Service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def shadow_calls(service: Service, shadow: str) -> float:
    return sum(metric(service, "modelport_shadow_calls_total", model="m", shadow=shadow,
                      outcome=o) for o in ("compared", "error", "timeout", "dropped"))


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 100, (n, 3)).astype(np.float64)


@pytest.mark.timeout(600)  # 10,000 requests, one at a time
def test_with_a_shadow_every_caller_gets_productions_answer_and_both_are_logged(
        settings: Settings, reg: Registry) -> None:
    service = Service(settings, served(shadow="m@candidate"), reg, follow=False)
    x, ids = rows(10_000), []
    with TestClient(create_app(service)) as client:
        for row in x:
            r = client.post("/models/m/predict", json={"instances": [row.tolist()]})
            assert r.status_code == 200
            assert r.json()["predictions"] == [row.sum() * 2]  # production's, not 3x
            assert r.json()["version"] == 1 and r.headers["x-model-version"] == "1"
            ids.append(r.headers["x-request-id"])
        wait_for(lambda: shadow_calls(service, "m@candidate") == 10_000,
                 what="10,000 shadows")
        compared = metric(service, "modelport_shadow_rows_total", model="m",
                          shadow="m@candidate")
        assert compared > 0 and compared == metric(
            service, "modelport_shadow_calls_total", model="m", shadow="m@candidate",
            outcome="compared")
        # a tripler never agrees with a doubler
        assert metric(service, "modelport_shadow_agreement", model="m",
                      shadow="m@candidate") == 0.0
        page = client.get("/metrics").text
        assert 'modelport_shadow_agreement{model="m",shadow="m@candidate"} 0.0' in page
    # stopped: the prediction log is flushed; shadow rows pair with the primary's
    engine = sa.create_engine(settings.resolved_registry_url)
    with engine.connect() as conn:
        logged = conn.execute(sa.text(
            "SELECT request_id, version, source, outputs FROM mp_predictions "
            "WHERE model = 'm'")).all()
    engine.dispose()
    primary = {r.request_id: r for r in logged if r.source == "predict"}
    shadow = {r.request_id: r for r in logged if r.source == "shadow:predict"}
    assert set(primary) == set(ids)
    assert len(shadow) == compared and set(shadow) <= set(primary)
    for rid, row in shadow.items():
        assert row.version == 3 and primary[rid].version == 1
        assert row.outputs["predictions"] == primary[rid].outputs["predictions"] * 1.5
    # the report pairs them again: a section of its own
    store = LogStore(settings.resolved_log_url)
    now = datetime.now(UTC)
    report = build_report(store, reg, now - timedelta(hours=1), now + timedelta(minutes=1))
    store.close()
    assert report.summary()["shadows"] == [{
        "model": "m", "version": 1, "shadow": "m", "shadow_version": 3,
        "rows": compared, "agreement": 0.0}]
    assert "<h2>Shadow agreement</h2>" in render_html(report)


def test_a_shadow_that_agrees_has_agreement_one(settings: Settings, reg: Registry) -> None:
    service = Service(settings, served(shadow="m@staging"), reg, follow=False)
    with TestClient(create_app(service)) as client:
        for row in rows(200):
            assert client.post("/models/m/predict",
                               json={"instances": [row.tolist()]}).status_code == 200
        wait_for(lambda: shadow_calls(service, "m@staging") == 200, what="200 shadows")
        assert metric(service, "modelport_shadow_agreement", model="m",
                      shadow="m@staging") == 1.0


@pytest.mark.parametrize(("shadow", "switch", "outcomes"), [
    ("bad:1", "TOY_RAISE", ["error"]), ("slow:1", "TOY_SLEEP", ["timeout", "dropped"])])
def test_a_shadow_that_raises_or_sleeps_adds_no_error(
        settings: Settings, reg: Registry, monkeypatch: pytest.MonkeyPatch,
        shadow: str, switch: str, outcomes: list[str]) -> None:
    policy = {"ref": shadow, "timeout_s": 0.5}
    service = Service(settings, served(shadow=policy), reg, follow=False)
    x = rows(2000, seed=1)
    with TestClient(create_app(service)) as client:
        monkeypatch.setenv(switch, "1")  # loaded (and smoke-tested) before it breaks
        statuses = Counter()
        for row in x:
            r = client.post("/models/m/predict", json={"instances": [row.tolist()]})
            statuses[r.status_code] += 1
            assert r.json()["predictions"] == [row.sum() * 2]
        assert statuses == {200: 2000}
        for seen in outcomes:  # the shadow's trouble is counted on its side only
            wait_for(lambda seen=seen: metric(  # type: ignore[misc]
                service, "modelport_shadow_calls_total", model="m", shadow=shadow,
                outcome=seen) > 0, what=f"a shadow call counted as {seen}")
        assert metric(service, "modelport_shadow_calls_total", model="m", shadow=shadow,
                      outcome="compared") == 0


@pytest.mark.timeout(600)  # 10,000 requests, one at a time
def test_a_canary_answers_its_share_and_names_its_version(
        settings: Settings, reg: Registry) -> None:
    service = Service(settings, served(canary={"ref": "m@candidate", "weight": 10}), reg,
                      follow=False)
    versions: Counter[int] = Counter()
    with TestClient(create_app(service)) as client:
        for row in rows(10_000, seed=2):
            r = client.post("/models/m/predict", json={"instances": [row.tolist()]})
            body = r.json()
            versions[body["version"]] += 1
            assert r.headers["x-model-version"] == str(body["version"])
            # the answer is the named version's own
            assert body["predictions"] == [row.sum() * (3 if body["version"] == 3 else 2)]
        assert set(versions) == {1, 3}
        assert 0.085 <= versions[3] / 10_000 <= 0.115
        # the Open Inference Protocol names the version that answered too
        oip = Counter()
        for _ in range(100):
            r = client.post("/v2/models/m/infer", json={"inputs": [
                {"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]})
            out = r.json()
            oip[out["model_version"]] += 1
            assert out["outputs"][0]["data"] == [6 * (3 if out["model_version"] == "3" else 2)]
        assert oip == {"1": 90, "3": 10}


def test_a_canary_keyed_on_a_header_keeps_each_caller_on_one_version(
        settings: Settings, reg: Registry) -> None:
    policy = {"ref": "m@candidate", "weight": 10, "key": "header:x-user"}
    service = Service(settings, served(canary=policy), reg, follow=False)
    first: dict[str, int] = {}
    with TestClient(create_app(service)) as client:
        def ask(user: str) -> int:
            r = client.post("/models/m/predict", json={"instances": [[1, 2, 3]]},
                            headers={"x-user": user})
            version: int = r.json()["version"]
            return version
        for i in range(5000):
            first[f"user-{i}"] = ask(f"user-{i}")
        share = sum(v == 3 for v in first.values()) / len(first)
        assert 0.085 <= share <= 0.115
        for user in list(first)[:500]:  # asked again: the same answerer
            assert ask(user) == first[user]


def test_a_canary_keyed_on_a_field_routes_by_its_value(settings: Settings) -> None:
    frame = pd.DataFrame({"user": [1.0, 2.0], "a": [1.0, 1.0], "b": [1.0, 1.0]})
    with Registry(settings=settings) as reg:
        for model, alias in ((toy_models.Doubler(), "production"),
                             (toy_models.Tripler(), "candidate")):
            reg.set_alias("f", alias, reg.register("f", model, sample_input=frame).version)
        config = ServiceConfig(models=[ModelConfig(
            ref="f@production", trusted=True,
            canary={"ref": "f@candidate", "weight": 20, "key": "field:user"})])
        with TestClient(create_app(Service(settings, config, reg, follow=False))) as client:
            def ask(user: int) -> int:
                r = client.post("/models/f/predict",
                                json={"records": [{"user": user, "a": 1, "b": 1}]})
                version: int = r.json()["version"]
                return version
            users = {u: ask(u) for u in range(2000)}
            assert 0.185 <= sum(v == 2 for v in users.values()) / 2000 <= 0.215
            assert all(ask(u) == users[u] for u in range(300))


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "keys.yaml"
    return {"path": path, "admin": add_key(path, "ops", ["admin"])}


def test_policies_change_live_through_the_admin_api(
        settings: Settings, reg: Registry, keys: dict[str, Any]) -> None:
    service = Service(settings, served(), reg, follow=False)
    admin = {"x-api-key": keys["admin"]}

    def versions(n: int) -> Counter[int]:
        return Counter(client.post("/models/m/predict", json={"instances": [[1, 2, 3]]}
                                   ).json()["version"] for _ in range(n))

    with TestClient(create_app(service, keys=KeyStore.load(keys["path"]))) as client:
        assert versions(50) == {1: 50}
        r = client.patch("/admin/traffic/m", headers=admin,
                         json={"canary": {"ref": "m@candidate", "weight": 50}})
        assert r.status_code == 200, r.text
        assert r.json()["canary"]["weight"] == 50
        assert r.json()["targets"]["m@candidate"]["version"] == 3
        assert versions(200) == {1: 100, 3: 100}
        # the canary's alias is followed like the served model's
        reg.set_alias("m", "candidate", 2)
        assert client.post("/admin/refresh", headers=admin).status_code == 200
        assert versions(200) == {1: 100, 2: 100}
        reg.set_alias("m", "candidate", 3)
        client.post("/admin/refresh", headers=admin)
        # a shadow added beside it keeps the canary
        r = client.patch("/admin/traffic/m", headers=admin, json={"shadow": "m@staging"})
        assert set(r.json()) >= {"shadow", "canary"}
        # refused, naming what is wrong; the policy in force stays
        r = client.patch("/admin/traffic/m", headers=admin,
                         json={"canary": {"ref": "m@candidate", "weight": 500}})
        assert r.status_code == 400 and "canary.weight" in r.json()["error"]
        r = client.patch("/admin/traffic/m", headers=admin,
                         json={"canary": {"ref": "m@nowhere", "weight": 5}})
        assert r.status_code == 409 and "m@nowhere" in r.json()["error"]
        assert client.get("/admin/traffic", headers=admin).json()["models"]["m"][
            "canary"]["ref"] == "m@candidate"
        assert client.patch("/admin/traffic/m", json={"shadow": None}).status_code == 401
        r = client.delete("/admin/traffic/m", headers=admin)
        assert r.status_code == 200 and "canary" not in r.json()
        assert versions(50) == {1: 50}
        assert client.get("/admin/traffic", headers=admin).json()["models"]["m"] == {
            "targets": {}}


def test_modelport_traffic_changes_a_running_server(
        tmp_path: Path, settings: Settings, reg: Registry, keys: dict[str, Any]) -> None:
    config = tmp_path / "modelport.yaml"
    config.write_text("models:\n  - ref: m@production\n    trusted: true\n")
    port = free_port()
    env = {**os.environ, "MODELPORT_HOME": str(settings.home),
           "MODELPORT_REGISTRY_URL": settings.resolved_registry_url,
           "MODELPORT_SERVER__API_KEYS_FILE": str(keys["path"]),
           "PYTHONPATH": str(Path(toy_models.__file__).parent)}
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "modelport", "serve", "--config",
                             str(config), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        while "serving" not in (line := proc.stderr.readline()):
            assert line, "the server exited before it was ready"

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "modelport", "traffic", *args, "--server", url,
                 "--api-key", keys["admin"]], env=env, capture_output=True, text=True,
                check=False)

        def version() -> int:
            answer: int = httpx.post(f"{url}/models/m/predict",
                                     json={"instances": [[1, 2, 3]]}).json()["version"]
            return answer

        assert version() == 1
        done = cli("set", "m", "--canary", "m@candidate", "--weight", "100")
        assert done.returncode == 0, done.stderr
        assert "m@candidate (version 3), 100%" in done.stdout
        assert version() == 3
        shown = json.loads(cli("show", "--json").stdout)
        assert shown["m"]["canary"] == {"ref": "m@candidate", "weight": 100.0}
        assert cli("clear", "m").returncode == 0
        assert version() == 1
        refused = cli("set", "m", "--canary", "m@nowhere", "--weight", "5")
        assert refused.returncode == 1 and "409" in refused.stderr
        assert "m@nowhere" in refused.stderr
        wrong_key = subprocess.run(
            [sys.executable, "-m", "modelport", "traffic", "show", "--server", url,
             "--api-key", "nope"], env=env, capture_output=True, text=True, check=False)
        assert wrong_key.returncode == 1 and "401" in wrong_key.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


def test_stop_does_not_wait_for_a_slow_shadows_queue(
        settings: Settings, reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    service = Service(settings, served(shadow={"ref": "slow:1", "timeout_s": 30}), reg,
                      follow=False)
    with TestClient(create_app(service)) as client:
        monkeypatch.setenv("TOY_SLEEP", "1")
        for _ in range(300):
            client.post("/models/m/predict", json={"instances": [[1, 2, 3]]})
        assert service.dataplane.shadows.waiting > 0
        started = time.monotonic()
    # queued shadow calls are dropped: only those in the model are waited for
    assert time.monotonic() - started < 10


def test_pipelines_go_through_the_same_policy(settings: Settings) -> None:
    """A pipeline over Redis rows: the canary answers its share of the runs (its version
    in the version column), the shadow sees the rest, as for the model routes."""
    from redis import Redis

    from conftest import REDIS_URL, require_service
    from modelport.config import PipelineEntry

    require_service("Redis", "127.0.0.1", 6379)
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 1.0], "c": [0.0, 1.0]})
    prefix = f"traffic-{os.getpid()}:"
    redis = Redis.from_url(REDIS_URL)
    for key in range(20):
        redis.hset(f"{prefix}{key}", mapping={"a": key, "b": 1, "c": 2})
    try:
        with Registry(settings=settings) as reg:
            for model, alias in ((toy_models.Doubler(), "production"),
                                 (toy_models.Tripler(), "candidate"),
                                 (toy_models.Doubler(), "staging")):
                reg.set_alias("p", alias,
                              reg.register("p", model, sample_input=frame).version)
            config = ServiceConfig(
                models=[ModelConfig(ref="p@production", trusted=True, shadow="p@staging",
                                    canary={"ref": "p@candidate", "weight": 25})],
                pipelines=[PipelineEntry(
                    name="score", model="p@production", version_column="version",
                    retriever={"type": "redis", "url": REDIS_URL, "prefix": prefix})])
            service = Service(settings, config, reg, follow=False)
            with TestClient(create_app(service)) as client:
                seen: Counter[int] = Counter()
                for i in range(100):
                    result = client.post("/pipelines/score/run",
                                         json={"key": i % 20}).json()["result"]
                    seen[result["version"]] += 1
                    factor = 3 if result["version"] == 2 else 2
                    assert result["predictions"] == (i % 20 + 3) * factor
                assert seen == {1: 75, 2: 25}
                wait_for(lambda: sum(metric(
                    service, "modelport_shadow_calls_total", model="p", shadow="p@staging",
                    outcome=o) for o in ("compared", "dropped")) == 75, what="75 shadows")
                assert metric(service, "modelport_shadow_agreement", model="p",
                              shadow="p@staging") == 1.0
    finally:
        redis.delete(*(f"{prefix}{key}" for key in range(20)))
        redis.close()
