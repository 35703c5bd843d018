"""Guarded promotion against real PostgreSQL: two replicas serve, the guard reads their
shared prediction log, and a version failing one row in five is rolled back."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from flaky_models import FailsOneRowInFive, Summer

from modelport import ModelConfig, Registry, Service, ServiceConfig, Settings
from modelport.cli import run
from modelport.server import create_app
from modelport.settings import BatchingSettings, MonitoringSettings, ServerSettings
from waiting import until

NAME = "m"


@pytest.fixture
def pg_settings(tmp_path: Path, pg_url: str) -> Settings:
    # one request = one model call (no batching), so a failed row fails only its own
    # request; replicas poll the registry and flush their logs often, to keep it short
    return Settings(home=tmp_path / "home", registry_url=pg_url,
                    batching=BatchingSettings(enabled=False),
                    server=ServerSettings(poll_interval_s=0.05),
                    monitoring=MonitoringSettings(flush_interval_s=0.1, sample_rate=0.0))


@pytest.fixture
def reg(pg_settings: Settings) -> Registry:
    registry = Registry(settings=pg_settings)
    registry.register(NAME, Summer(), sample_input=np.ones((2, 3)), trusted=True)
    registry.register(NAME, FailsOneRowInFive(), sample_input=np.ones((2, 3)), trusted=True)
    registry.set_alias(NAME, "production", 1)
    return registry


@pytest.fixture
async def replicas(pg_settings: Settings, reg: Registry
                   ) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Two servers following m@production, each with its own registry connection and
    prediction log, as two pods would have."""
    clients, services = [], []
    for _ in range(2):
        own = Registry(settings=pg_settings)
        config = ServiceConfig(models=[ModelConfig(ref=f"{NAME}@production", trusted=True)])
        service = Service(pg_settings, config, own)
        app = create_app(service)
        await service.start()
        services.append((service, own))
        clients.append(httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://mp"))
    yield clients
    for c in clients:
        await c.aclose()
    for service, own in services:
        await service.stop()
        own.close()
    reg.close()


async def test_a_version_failing_one_row_in_five_is_rolled_back_by_the_guard(
        reg: Registry, replicas: list[httpx.AsyncClient], pg_settings: Settings) -> None:
    from modelport.promotion import promote

    answers: list[tuple[int, int, int | None]] = []  # (row, status, version)
    counter = itertools.count(1)
    stop = asyncio.Event()

    async def load(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            i = next(counter)
            r = await client.post(f"/models/{NAME}/predict", json={"instances": [[i, 1, 1]]})
            answers.append((i, r.status_code, r.json().get("version")))

    def served(version: int, n: int) -> bool:
        return sum(1 for _, s, v in answers if v == version and s == 200) >= n

    workers = [asyncio.create_task(load(c)) for c in replicas for _ in range(4)]
    await until(lambda: served(1, 20), what="answers from v1")
    started = time.monotonic()
    p = await asyncio.to_thread(promote, reg, NAME, 2, guard="error_rate<5%,p99_ms<5000",
                                window="60s", every_s=0.1, min_requests=40)
    result = await asyncio.to_thread(p.watch)
    seconds = time.monotonic() - started
    # the replicas follow the rollback: v1 answers again
    before = len(answers)
    await until(lambda: sum(1 for _, s, v in answers[before:] if v == 1) >= 40,
                what="v1 answering after the rollback")
    stop.set()
    await asyncio.gather(*workers)

    assert result is not None and result.outcome == "rolled_back", result
    assert result.rolled_back_to == 1 and seconds < 60
    assert reg.get_alias(NAME, "production") == 1
    # both versions served; the only failures are v2's own refusals (multiples of 5):
    # no request failed because an alias moved, on either move
    assert {v for _, s, v in answers if s == 200} == {1, 2}
    failed = [(i, s) for i, s, _ in answers if s != 200]
    assert failed and all(i % 5 == 0 and s == 500 for i, s in failed), failed[:5]
    last = reg.alias_history(NAME, "production")[-1]
    assert (last.kind, last.actor, last.from_version, last.to_version) == (
        "rollback", "guard", 2, 1)
    assert last.reason is not None and "error_rate" in last.reason
    assert "broke error_rate<5%" in last.reason
    # the observed rate is about one in five (only v2's calls are counted)
    assert result.values["error_rate"] is not None and result.values["error_rate"] > 0.1


def test_models_history_shows_the_guards_rollback_with_metric_and_value(
        reg: Registry, pg_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """Without traffic the guard has nothing to judge a rate on, but a floor on requests
    is judged at the window's end: no traffic is a breach too."""
    from modelport.promotion import promote

    p = promote(reg, NAME, 2, guard="error_rate<1%,requests>=5", window="1s", every_s=0.1)
    result = p.watch()
    assert result is not None and result.outcome == "rolled_back"
    assert reg.get_alias(NAME, "production") == 1
    assert run(["models", "history", NAME, "--json"], pg_settings) == 0
    events = __import__("json").loads(capsys.readouterr().out)
    assert events[-1]["actor"] == "guard" and events[-1]["kind"] == "rollback"
    assert events[-1]["reason"].startswith("guard: requests 0 broke requests>=5")
    reg.close()


def test_the_guard_never_undoes_a_move_it_did_not_watch(reg: Registry) -> None:
    from modelport.promotion import promote

    p = promote(reg, NAME, 2, guard="error_rate<1%", window="60s", every_s=0.05)
    reg.set_alias(NAME, "production", 1, reason="by hand", actor="ops")
    result = p.watch()
    assert result is not None and result.outcome == "superseded"
    assert "moved to 1 by someone else" in result.reason
    history = reg.alias_history(NAME, "production")
    assert (history[-1].kind, history[-1].actor, history[-1].to_version) == ("set", "ops", 1)
    assert all(e.actor != "guard" for e in history)
    reg.close()
