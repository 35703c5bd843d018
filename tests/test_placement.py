"""Where a served model runs (modelport.placement): `on_loop: auto`, the default, times
it at load and runs it on the event loop when a call at one row and at the largest
batch takes under a millisecond, in a thread otherwise; `on_loop` and `workers`
override it; the choice is logged at load and shown in readiness."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from modelport import Registry, Settings
from modelport.dataplane import DataPlane, Deployment, ModelConfig
from modelport.placement import LOOP_MAX_S
from modelport.signature import Batch
from small_models import waits_per_row

X = np.random.default_rng(0).normal(size=(200, 3))
Y = (X[:, 0] > 0).astype(np.int64)


@pytest.fixture
def reg(settings: Settings) -> Iterator[Registry]:
    """`tiny:1`, a logistic regression on 3 features (a few hundred µs a call at any
    batch size), and `grows:1`, the same behind a step of 30 µs per row (about 2 ms at
    64 rows, the default `max_batch_size`)."""
    with Registry(settings=settings) as r:
        r.register("tiny", LogisticRegression().fit(X, Y), sample_input=X[:2])
        grows = make_pipeline(FunctionTransformer(waits_per_row), LogisticRegression())
        r.register("grows", grows.fit(X, Y), sample_input=X[:2], trusted=True)
        yield r


@pytest.fixture
async def served(reg: Registry, settings: Settings) -> AsyncIterator[list[DataPlane]]:
    planes: list[DataPlane] = []
    yield planes
    for dp in planes:
        await dp.stop()


async def serve(planes: list[DataPlane], reg: Registry, settings: Settings,
                config: ModelConfig) -> Deployment:
    dp = DataPlane(reg, settings, [config])
    planes.append(dp)
    await dp.start(follow=False)
    assert dp.load_errors() == []
    return dp.deployment(config.served_name)


async def answering_thread(deployment: Deployment) -> int:
    """The thread the model computes a request's answer on."""
    threads: list[int] = []
    predict_batch = deployment.model.predict_batch

    def spy(batch: Batch, outputs: Any = None) -> Batch:
        threads.append(threading.get_ident())
        return predict_batch(batch, outputs)

    deployment.model.predict_batch = spy  # type: ignore[method-assign]
    await deployment.submit({"input": X[:1]}, timeout=30)
    return threads[0]


async def test_a_tiny_model_runs_on_the_event_loop_and_says_so(
        reg: Registry, settings: Settings, served: list[DataPlane],
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "modelport.dataplane"):
        deployment = await serve(served, reg, settings, ModelConfig(ref="tiny:1"))
    placement = deployment.placement
    assert (placement.where, placement.reason) == ("loop", "auto")
    assert list(placement.timings) == [1, 64]  # one row and the largest batch
    assert all(0 < s < LOOP_MAX_S for s in placement.timings.values())
    assert await answering_thread(deployment) == threading.get_ident()  # the loop's
    said = [r.getMessage() for r in caplog.records if "runs on" in r.getMessage()]
    assert len(said) == 1 and re.fullmatch(
        r"tiny:1 \(served as tiny\) runs on the event loop \(auto: [\d,]+ µs a call at "
        r"batch 1, [\d,]+ µs at 64\)", said[0]), said
    detail = served[0].readiness()[1]["tiny"]["placement"]
    assert detail["where"] == "loop" and list(detail["us_per_call"]) == ["1", "64"]


async def test_a_model_slow_at_the_largest_batch_runs_in_a_thread(
        reg: Registry, settings: Settings, served: list[DataPlane]) -> None:
    deployment = await serve(served, reg, settings, ModelConfig(ref="grows:1", trusted=True))
    placement = deployment.placement
    assert (placement.where, placement.reason) == ("thread", "auto")
    assert placement.timings[64] >= LOOP_MAX_S  # cheap at one row is not enough
    assert await answering_thread(deployment) != threading.get_ident()


async def test_without_batching_only_one_row_is_timed(
        reg: Registry, settings: Settings, served: list[DataPlane]) -> None:
    settings.batching.enabled = False  # every call is one request's rows
    deployment = await serve(served, reg, settings, ModelConfig(ref="grows:1", trusted=True))
    assert deployment.placement.where == "loop"
    assert list(deployment.placement.timings) == [1]


@pytest.mark.parametrize(("ref", "on_loop", "where"), [
    ("tiny:1", False, "thread"), ("grows:1", True, "loop")])
async def test_on_loop_true_or_false_overrides_the_timing(
        reg: Registry, settings: Settings, served: list[DataPlane], ref: str,
        on_loop: bool, where: str) -> None:
    deployment = await serve(served, reg, settings,
                             ModelConfig(ref=ref, on_loop=on_loop, trusted=True))
    placement = deployment.placement
    assert (placement.where, placement.reason, placement.timings) == \
        (where, f"on_loop: {str(on_loop).lower()}", {})  # not timed at all
    on_loop_thread = await answering_thread(deployment) == threading.get_ident()
    assert on_loop_thread == on_loop
