"""The service, the one composition root: its lifecycle as every trigger uses it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelport import (
    ConfigError,
    ModelConfig,
    Pipeline,
    Registry,
    Service,
    ServiceConfig,
    Settings,
    create_app,
)
from modelport.pipeline import MemoryWriter
from small_models import Gated


class Opened(MemoryWriter):
    """A writer that records whether its pipeline opened and closed it."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")

    async def close(self) -> None:
        self.events.append("close")


@pytest.fixture
def reg(settings: Settings) -> Iterator[Registry]:
    registry = Registry(settings=settings)
    registry.register("gated", Gated(), sample_input=np.ones((1, 3)))
    yield registry
    registry.close()


def gated(settings: Settings, reg: Registry) -> Service:
    config = ServiceConfig(models=[ModelConfig(ref="gated:1", trusted=True)])
    return Service(settings, config, reg, follow=False)


async def test_async_with_loads_the_models_and_starts_the_pipelines(settings, reg) -> None:
    service = gated(settings, reg)
    writer = Opened()
    service.add(Pipeline("log", "gated", service.dataplane, writer=writer))
    async with service:
        assert service.started
        assert service.dataplane.load_errors() == []
        assert service.dataplane.endpoints["gated"].ready
        assert writer.events == ["start"]
    assert not service.started
    assert writer.events == ["start", "close"]


async def test_stop_answers_the_call_in_flight_before_it_returns(settings, reg) -> None:
    service = gated(settings, reg)
    await service.start()
    deployment = service.dataplane.deployment("gated")
    model = type(deployment.model.flavor.model)  # the loaded copy's class holds the gate
    model.gate.clear()
    model.entered.clear()
    try:
        batch = deployment.model.signature.decode([[1.0, 2.0, 3.0]])
        call = asyncio.create_task(service.dataplane.predict(deployment, batch))
        assert await asyncio.to_thread(model.entered.wait, 30)  # in the model, held
        stopping = asyncio.create_task(service.stop())
        for _ in range(20):  # let the stop run as far as it can on its own
            await asyncio.sleep(0)
        assert not stopping.done()  # it waits for the call in flight
    finally:
        model.gate.set()
    await stopping
    answer = await call
    assert next(iter(answer.values())).tolist() == [12.0]
    assert not service.started


async def test_a_strict_start_refuses_a_missing_model(settings, reg) -> None:
    config = ServiceConfig(models=[ModelConfig(ref="missing:1")])
    service = Service(settings, config, reg, follow=False)
    with pytest.raises(ConfigError, match="missing"):
        await service.start(strict=True)
    assert not service.started  # what had started was stopped again


async def test_a_lenient_start_serves_what_loads_and_reports_the_rest(settings, reg) -> None:
    config = ServiceConfig(models=[ModelConfig(ref="gated:1", trusted=True),
                                   ModelConfig(ref="missing:1")])
    async with Service(settings, config, reg, follow=False) as service:
        assert service.dataplane.endpoints["gated"].ready
        assert [e for e in service.dataplane.load_errors() if "missing" in e]


def test_the_process_is_settled_once(settings, reg, monkeypatch) -> None:
    frozen: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(1))
    service = gated(settings, reg)
    with TestClient(create_app(service)) as client:  # the app starts and settles it
        assert client.get("/v2/health/ready").status_code == 200
        assert frozen == [1]
        service.settle()  # a second trigger on the same service (a stream runner)
    assert frozen == [1]
    assert not service.started  # the app stopped the service it started


async def test_a_service_that_the_app_did_not_start_is_not_restarted(settings, reg) -> None:
    service = gated(settings, reg)
    await service.start(strict=True)
    app = create_app(service)
    loaded = service.dataplane.deployment("gated")
    async with app.router.lifespan_context(app):
        assert service.dataplane.deployment("gated") is loaded  # not loaded again
    assert not service.started  # the app's end is the service's end


def test_a_pipeline_name_is_added_once(settings, reg) -> None:
    service = gated(settings, reg)
    service.add(Pipeline("log", "gated", service.dataplane, writer=MemoryWriter()))
    with pytest.raises(ConfigError, match="two pipelines are named 'log'"):
        service.add(Pipeline("log", "gated", service.dataplane, writer=MemoryWriter()))


async def test_a_service_opens_and_closes_its_own_registry(settings) -> None:
    with Registry(settings=settings) as reg:
        reg.register("gated", Gated(), sample_input=np.ones((1, 3)))
    config = ServiceConfig(models=[ModelConfig(ref="gated:1", trusted=True)])
    async with Service(settings, config, follow=False) as service:
        assert service.dataplane.endpoints["gated"].ready
        assert service.registry.resolve("gated:1").version == 1
