"""The data plane on its own, as every trigger calls it: which version serves a name,
following an alias (the new version loaded before the old one goes), a version that
fails to load (reported, retried), the rows a model answers, and readiness."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport import Registry, Settings
from modelport.dataplane import DataPlane, ModelConfig
from modelport.errors import (
    ModelNotFound,
    ModelOutputError,
    ModelportError,
    NotReady,
    Overloaded,
    VersionNotFound,
)
from modelport.signature import Batch
from small_models import DropsFirstRow
from waiting import until

IN_A_THREAD = {"where": "thread", "reason": "auto: python-flavor code may wait on I/O",
               "us_per_call": {}}
"""Where `on_loop: auto` runs every model here (modelport.placement)."""

# Packaged python models are imported afresh from their own copy of this module when
# loaded, so the switches that reach them are environment variables and files.


class Times:
    """Each row's sum times `factor`: versions of one model that answer differently."""

    factor = 1.0

    def predict(self, x: Any) -> Any:
        import numpy as np

        return np.asarray(x, dtype=np.float64).sum(axis=1) * self.factor


class TimesTwo(Times):
    factor = 2.0


class TimesThree(Times):
    factor = 3.0


class Gated(TimesThree):
    """Once DP_GATE names a file: touches DP_GATE.entered and waits for the file to
    exist before answering (holds a load's smoke test for as long as the test wants)."""

    def predict(self, x: Any) -> Any:
        import os
        import time

        gate = os.environ.get("DP_GATE")
        if gate:
            open(gate + ".entered", "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        return super().predict(x)


class Breaks(Times):
    """Loads and answers until DP_BROKEN is set; then fails its load, or (DP_BROKEN=
    predict) answers nothing but errors."""

    def load(self, files: dict[str, Any]) -> None:
        import os

        if os.environ.get("DP_BROKEN") == "load":
            raise RuntimeError("weights are corrupt")

    def predict(self, x: Any) -> Any:
        import os

        if os.environ.get("DP_BROKEN") == "predict":
            raise RuntimeError("predicts nothing")
        return super().predict(x)


def register(reg: Registry, name: str, obj: object) -> int:
    return reg.register(name, obj, sample_input=np.ones((2, 3))).version


def rows(*values: float) -> Batch:
    return {"input": np.asarray([[v, 0.0, 0.0] for v in values], dtype=np.float64)}


@pytest.fixture
def reg(settings: Settings) -> Iterator[Registry]:
    r = Registry(settings=settings)
    yield r
    r.close()


@pytest.fixture
async def started() -> AsyncIterator[list[DataPlane]]:
    """Data planes a test starts here are stopped after it, passed or failed."""
    planes: list[DataPlane] = []
    yield planes
    for dp in planes:
        await dp.stop()


async def start(planes: list[DataPlane], reg: Registry, settings: Settings,
                *configs: ModelConfig, follow: bool = False) -> DataPlane:
    dp = DataPlane(reg, settings, list(configs))
    planes.append(dp)
    await dp.start(follow=follow)
    return dp


async def answer(dp: DataPlane, name: str, *values: float) -> tuple[int, list[float]]:
    """(the version that answered, its predictions) for rows starting with `values`."""
    deployment = dp.deployment(name)
    out = await dp.predict(deployment, rows(*values))
    return deployment.version, out["predictions"].tolist()


def sample(dp: DataPlane, name: str) -> float | None:
    return dp.metrics.registry.get_sample_value(
        "modelport_model_loads_total", {"model": name, "outcome": "failed"})


# --- which version serves a name -------------------------------------------------------


async def test_a_name_is_served_by_the_version_its_ref_resolves_to(
        registry: Registry, settings: Settings, started: list[DataPlane]) -> None:
    for model in (TimesTwo(), TimesThree(), TimesTwo()):
        register(registry, "m", model)
    registry.set_alias("m", "production", 2)
    dp = await start(started, registry, settings,
                     ModelConfig(ref="m@production", trusted=True),
                     ModelConfig(ref="m:1", name="pinned", trusted=True),
                     ModelConfig(ref="m", name="latest", trusted=True))
    assert await answer(dp, "m", 1) == (2, [3.0])
    assert await answer(dp, "pinned", 1) == (1, [2.0])
    assert await answer(dp, "latest", 1) == (3, [2.0])
    assert dp.deployment("m", 2).version == dp.deployment("m", "2").version == 2
    with pytest.raises(VersionNotFound, match="model 'm' serves version 2, not 1"):
        dp.deployment("m", 1)
    with pytest.raises(ModelNotFound, match="model 'nope' is not served here"):
        dp.deployment("nope")


def test_two_models_cannot_be_served_under_one_name(reg: Registry, settings: Settings) -> None:
    with pytest.raises(ModelportError, match="two models are served as 'm'"):
        DataPlane(reg, settings, [ModelConfig(ref="m@production"), ModelConfig(ref="m:1")])


def test_on_the_loop_or_in_processes_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        ModelConfig(ref="m@production", on_loop=True, workers=2)


# --- following an alias -------------------------------------------------------------------


async def test_an_alias_move_loads_the_new_version_before_the_old_one_goes(
        reg: Registry, settings: Settings, started: list[DataPlane], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    register(reg, "m", TimesTwo())
    register(reg, "m", Gated())
    reg.set_alias("m", "production", 1)
    dp = await start(started, reg, settings, ModelConfig(ref="m@production", trusted=True))
    old = dp.deployment("m")
    gate = tmp_path / "gate"
    monkeypatch.setenv("DP_GATE", str(gate))
    reg.set_alias("m", "production", 2)
    refreshing = asyncio.create_task(dp.refresh())
    await until(Path(f"{gate}.entered").exists, what="version 2's smoke test")
    # version 2 is loaded and being tried on its sample: version 1 still answers
    assert await answer(dp, "m", 1) == (1, [2.0])
    assert dp.readiness()[1]["m"]["version"] == 1
    gate.touch()
    await refreshing
    assert await answer(dp, "m", 1) == (2, [3.0])
    assert dp.readiness() == (True, {"m": {"ready": True, "version": 2, "ref": "m@production",
                                           "placement": IN_A_THREAD}})
    with pytest.raises(Overloaded, match="being unloaded"):  # the old one is closed
        await old.batcher.submit(rows(1))
    assert dp.metrics.registry.get_sample_value(
        "modelport_served_version", {"model": "m"}) == 2


async def test_the_registry_is_followed_without_being_asked(
        registry: Registry, settings: Settings, started: list[DataPlane]) -> None:
    register(registry, "m", TimesTwo())
    register(registry, "m", TimesThree())
    registry.set_alias("m", "production", 1)
    settings.server.poll_interval_s = 0.05
    dp = await start(started, registry, settings,
                     ModelConfig(ref="m@production", trusted=True), follow=True)
    registry.set_alias("m", "production", 2)
    await until(lambda: dp.deployment("m").version == 2, what="the alias followed")
    assert await answer(dp, "m", 1) == (2, [3.0])


async def test_a_version_whose_smoke_test_fails_leaves_the_old_one_serving(
        reg: Registry, settings: Settings, started: list[DataPlane],
        monkeypatch: pytest.MonkeyPatch) -> None:
    register(reg, "m", TimesTwo())
    register(reg, "m", Breaks())
    reg.set_alias("m", "production", 1)
    dp = await start(started, reg, settings, ModelConfig(ref="m@production", trusted=True))
    monkeypatch.setenv("DP_BROKEN", "predict")
    reg.set_alias("m", "production", 2)
    await dp.refresh()
    assert await answer(dp, "m", 1) == (1, [2.0])
    ready, detail = dp.readiness()
    assert ready and detail["m"]["version"] == 1
    assert detail["m"]["error"].startswith("m@production (version 2): smoke test on the "
                                           "signature's sample failed")
    assert "predicts nothing" in detail["m"]["error"]


# --- a version that fails to load -----------------------------------------------------------


async def test_a_model_that_fails_to_load_is_reported_not_ready_and_retried(
        reg: Registry, settings: Settings, started: list[DataPlane],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    register(reg, "m", Breaks())
    reg.set_alias("m", "production", 1)
    monkeypatch.setenv("DP_BROKEN", "load")
    with caplog.at_level(logging.ERROR, "modelport.dataplane"):
        dp = await start(started, reg, settings, ModelConfig(ref="m@production", trusted=True))
        ready, detail = dp.readiness()
        error = detail["m"].pop("error")
        assert (ready, detail) == (False, {"m": {"ready": False, "version": None,
                                                 "ref": "m@production"}})
        assert error.startswith("m@production (version 1): ") and "weights are corrupt" in error
        assert dp.load_errors() == [error]
        with pytest.raises(NotReady, match=re.escape(f"model 'm' is not loaded: {error}")):
            dp.deployment("m")
        await dp.refresh()  # within the backoff: not tried again
        assert sample(dp, "m") == 1
        await dp.refresh(force=True)  # what POST /admin/refresh does: tried now
        assert sample(dp, "m") == 2
    waits = [r.getMessage().rsplit("trying again in ", 1)[1] for r in caplog.records
             if r.name == "modelport.dataplane"]
    assert waits == ["1s)", "2s)"]  # each failure waits twice as long before a retry

    monkeypatch.delenv("DP_BROKEN")  # the weights are back
    await dp.refresh(force=True)
    assert dp.readiness() == (True, {"m": {"ready": True, "version": 1, "ref": "m@production",
                                           "placement": IN_A_THREAD}})
    assert dp.load_errors() == []
    assert await answer(dp, "m", 1) == (1, [1.0])


async def test_once_the_backoff_is_over_a_plain_refresh_tries_again(
        reg: Registry, settings: Settings, started: list[DataPlane],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import modelport.deployment

    monkeypatch.setattr(modelport.deployment, "RETRY_FIRST_S", 0.0)  # over at once
    register(reg, "m", Breaks())
    reg.set_alias("m", "production", 1)
    monkeypatch.setenv("DP_BROKEN", "load")
    dp = await start(started, reg, settings, ModelConfig(ref="m@production", trusted=True))
    monkeypatch.delenv("DP_BROKEN")
    await dp.refresh()
    assert dp.readiness()[0] and sample(dp, "m") == 1


async def test_an_alias_that_does_not_exist_is_not_ready_naming_it(
        reg: Registry, settings: Settings, started: list[DataPlane]) -> None:
    register(reg, "m", TimesTwo())
    dp = await start(started, reg, settings, ModelConfig(ref="m:1", trusted=True),
                     ModelConfig(ref="m@missing", name="other", trusted=True))
    ready, detail = dp.readiness()
    assert not ready
    assert detail["m"] == {"ready": True, "version": 1, "ref": "m:1", "placement": IN_A_THREAD}
    assert detail["other"] == {"ready": False, "version": None, "ref": "m@missing",
                               "error": "m@missing: model 'm' has no alias 'missing'"}
    reg.set_alias("m", "missing", 1)  # created later: picked up by the next refresh
    await dp.refresh()
    assert dp.readiness()[0]


async def test_nothing_to_serve_is_ready_only_when_the_service_says_so(
        reg: Registry, settings: Settings, started: list[DataPlane]) -> None:
    dp = await start(started, reg, settings)
    assert dp.readiness() == (False, {})
    dp.ready_without_models = True  # an events API, a stream worker: no model of its own
    assert dp.readiness() == (True, {})


# --- what a model answers ---------------------------------------------------------------


async def test_a_batch_answered_with_the_wrong_rows_fails_and_is_counted(
        reg: Registry, settings: Settings, started: list[DataPlane]) -> None:
    reg.register("drops", DropsFirstRow(), sample_input=np.ones((1, 3)))
    dp = await start(started, reg, settings, ModelConfig(ref="drops:1", trusted=True))
    assert await answer(dp, "drops", 5) == (1, [10.0])
    with pytest.raises(ModelOutputError, match="answered 2 rows of 'predictions' for a "
                                               "batch of 3 rows"):
        await answer(dp, "drops", 1, 2, 3)
    assert dp.metrics.registry.get_sample_value(
        "modelport_model_output_row_errors_total", {"model": "drops", "version": "1"}) == 1


async def test_stop_answers_what_was_accepted_then_unloads(
        reg: Registry, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    register(reg, "m", Gated())
    dp = DataPlane(reg, settings, [ModelConfig(ref="m:1", trusted=True)])
    await dp.start(follow=False)
    gate = tmp_path / "gate"
    monkeypatch.setenv("DP_GATE", str(gate))
    deployment = dp.deployment("m")
    accepted = asyncio.create_task(dp.predict(deployment, rows(1)))
    await until(Path(f"{gate}.entered").exists, what="the request in the model")
    stopping = asyncio.create_task(dp.stop())
    await until(lambda: not dp.started, what="stop() begun")
    gate.touch()
    await stopping
    assert accepted.result()["predictions"].tolist() == [3.0]
    with pytest.raises(Overloaded):
        await dp.predict(deployment, rows(1))

