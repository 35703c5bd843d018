"""A guard on shadow agreement, against real databases (SQLite and PostgreSQL): a server
follows m@production with m@stable (the old production) as its shadow; the guard pairs
the two answers again from the shared prediction log and rolls back a promoted
version that disagrees with the old one on one row in five, and holds one that agrees."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from flaky_models import OffOneRowInFive, Summer

from modelport import ModelConfig, Registry, Service, ServiceConfig, Settings
from modelport.cli import run
from modelport.promotion import promote
from modelport.server import create_app
from modelport.settings import BatchingSettings, MonitoringSettings, ServerSettings
from waiting import until

NAME = "m"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    # every row logged (agreement is over the sampled rows), one request = one call,
    # and a replica that follows the alias and flushes its log quickly
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Settings(home=tmp_path / "home", registry_url=url,
                    batching=BatchingSettings(enabled=False),
                    server=ServerSettings(poll_interval_s=0.05),
                    monitoring=MonitoringSettings(flush_interval_s=0.1, sample_rate=1.0))


@pytest.fixture
def reg(db_settings: Settings) -> Iterator[Registry]:
    """v1 and v2 add up their row; v3 is off by one on one row in five. Production
    and stable start on v1."""
    with Registry(settings=db_settings) as registry:
        for model in (Summer(), Summer(), OffOneRowInFive()):
            registry.register(NAME, model, sample_input=np.ones((2, 3)), trusted=True)
        registry.set_alias(NAME, "production", 1)
        registry.set_alias(NAME, "stable", 1)
        yield registry


@pytest.fixture
async def answers(db_settings: Settings, reg: Registry) -> AsyncIterator[list[int]]:
    """The version behind each answer of a steady load on a replica serving
    m@production with m@stable as its shadow (its own registry and log, as a pod)."""
    own = Registry(settings=db_settings)
    config = ServiceConfig(models=[ModelConfig(ref=f"{NAME}@production", trusted=True,
                                               shadow=f"{NAME}@stable")])
    service = Service(db_settings, config, own)
    await service.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)),
                               base_url="http://mp")
    versions: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:
        for i in itertools.count(1):
            if stop.is_set():
                return
            r = await client.post(f"/models/{NAME}/predict",
                                  json={"instances": [[i, 1, 1]]})
            assert r.status_code == 200, r.text  # a shadow never fails a caller
            versions.append(r.json()["version"])

    task = asyncio.create_task(load())
    await until(lambda: len(versions) >= 20, what="answers from v1")
    yield versions
    stop.set()
    await task
    await client.aclose()
    await service.stop()
    own.close()


async def test_a_version_disagreeing_with_the_old_one_is_rolled_back_on_agreement(
        reg: Registry, answers: list[int], db_settings: Settings,
        capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(run, [
        "promote", NAME, "3", "--guard", "agreement>95%", "--window", "60s",
        "--every", "0.1", "--min-requests", "20"], db_settings)
    out = capsys.readouterr().out
    assert code == 1, out
    assert "broke agreement>95%" in out
    assert reg.get_alias(NAME, "production") == 1
    assert 3 in answers  # v3 did answer before the guard rolled it back
    before = len(answers)
    await until(lambda: answers[before:].count(1) >= 10, what="v1 answering again")

    assert run(["models", "history", NAME, "--json"], db_settings) == 0
    last = json.loads(capsys.readouterr().out)[-1]
    assert (last["kind"], last["actor"], last["from_version"], last["to_version"]) == (
        "rollback", "guard", 3, 1)
    # the value: about four rows in five of v3's answers matched v1's
    reason = last["reason"]
    assert reason.startswith("guard: agreement ") and "broke agreement>95%" in reason
    value = float(reason.removeprefix("guard: agreement ").split("%")[0])
    assert 60 < value < 95, reason


async def test_a_version_agreeing_with_the_old_one_is_held(
        reg: Registry, answers: list[int]) -> None:
    p = await asyncio.to_thread(promote, reg, NAME, 2, guard="agreement>95%", window="8s",
                                every_s=0.1, min_requests=20)
    result = await asyncio.to_thread(p.watch)
    assert result is not None and result.outcome == "held", result
    # judged, not merely unjudged: v2's rows were compared with v1's
    assert result.values["agreement"] == 1.0
    assert reg.get_alias(NAME, "production") == 2
    last = reg.alias_history(NAME, "production")[-1]
    assert (last.kind, last.actor, last.to_version) == ("hold", "guard", 2)
    assert last.reason is not None and "agreement 100%" in last.reason
    assert 2 in answers
