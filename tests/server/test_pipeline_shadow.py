"""A pipeline run over HTTP with a `shadow_writer`: the caller gets the primary's answer
without waiting for the shadow, whose results reach the side writer in the background
(waited for when the service stops); a `shadow_writer` without a shadow is idle."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import toy_models
from starlette.testclient import TestClient

from modelport import ModelConfig, Registry, Service, ServiceConfig
from modelport.config import PipelineEntry
from modelport.errors import ConfigError
from modelport.pipeline import MemoryWriter, Pipeline
from modelport.server import create_app
from modelport.settings import Settings
from waiting import wait_for

SAMPLE = pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 1.0], "c": [0.0, 1.0]})
ROWS = {k: {"a": float(k), "b": 1.0, "c": 2.0, "tag": f"t{k}"} for k in range(5)}


def service(settings: Settings, **policy: Any) -> Service:
    """`m`: 1 doubles (production), 2 doubles once the file TOY_GATE names exists."""
    reg = Registry(settings=settings)
    for model, alias in ((toy_models.Doubler(), "production"), (toy_models.Gated(), "staging")):
        reg.set_alias("m", alias, reg.register("m", model, sample_input=SAMPLE).version)
    reg.close()
    return Service(settings, ServiceConfig(
        models=[ModelConfig(ref="m@production", trusted=True, **policy)],
        pipelines=[PipelineEntry(
            name="score", model="m@production", version_column="version",
            retriever={"type": "memory", "rows": ROWS},
            writer={"type": "memory"}, shadow_writer={"type": "memory"})]), follow=False)


def test_an_http_run_answers_before_its_shadow_is_written(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = service(settings, shadow="m@staging")
    gate = tmp_path / "gate"
    side = svc.pipeline("score").shadow_writer
    assert isinstance(side, MemoryWriter)
    with TestClient(create_app(svc)) as client:
        monkeypatch.setenv("TOY_GATE", str(gate))  # smoke-tested: now the shadow waits
        answer = client.post("/pipelines/score/run", json={"keys": [1, 2]}).json()
        assert [r["predictions"] for r in answer["results"]] == [8.0, 10.0]
        # answered, while the shadow is held inside its model
        wait_for(lambda: Path(f"{gate}.started").exists(), what="the shadow's call")
        assert side.rows == {}
        gate.touch()
    # stopping waited for the side to be written
    # the pass-through columns, the shadow's outputs and version
    assert side.rows == {1: {"tag": "t1", "predictions": 8.0, "version": 2},
                         2: {"tag": "t2", "predictions": 10.0, "version": 2}}
    assert svc.metrics.registry.get_sample_value("modelport_shadow_calls_total", {
        "model": "m", "shadow": "m@staging", "outcome": "compared"}) == 1


def test_http_runs_beyond_the_sides_in_flight_drop_their_side_not_their_answer(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modelport.pipeline.shadow.SIDE_IN_FLIGHT", 2)
    svc = service(settings, shadow="m@staging")
    gate = tmp_path / "gate"
    side = svc.pipeline("score").shadow_writer
    assert isinstance(side, MemoryWriter)
    with TestClient(create_app(svc)) as client:
        monkeypatch.setenv("TOY_GATE", str(gate))  # the shadow holds every call
        answers = [client.post("/pipelines/score/run", json={"key": k}).json()
                   for k in (1, 2, 3, 4)]
        # every caller answered while both sides in flight are held
        assert [a["result"]["predictions"] for a in answers] == [8.0, 10.0, 12.0, 14.0]
        wait_for(lambda: Path(f"{gate}.started").exists(), what="the shadow's call")
        assert svc.metrics.registry.get_sample_value("modelport_shadow_calls_total", {
            "model": "m", "shadow": "m@staging", "outcome": "dropped"}) == 2
        gate.touch()
    # the first two sides were written when the service stopped; the rest never were
    assert sorted(side.rows) == [1, 2]
    assert svc.metrics.registry.get_sample_value("modelport_shadow_calls_total", {
        "model": "m", "shadow": "m@staging", "outcome": "compared"}) == 2


def test_a_shadow_writer_without_a_shadow_is_idle_and_says_so(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    svc = service(settings)
    side = svc.pipeline("score").shadow_writer
    assert isinstance(side, MemoryWriter)
    caplog.set_level(logging.WARNING, "modelport.pipeline")
    with TestClient(create_app(svc)) as client:
        answer = client.post("/pipelines/score/run", json={"key": 1}).json()
        assert answer["result"]["predictions"] == 8.0
    assert side.rows == {}
    assert "pipeline score: model m has no shadow: the shadow_writer writes nothing " \
        "until it has one" in caplog.text


def test_a_shadow_writer_needs_a_model(settings: Settings) -> None:
    from modelport.dataplane import DataPlane

    dataplane = DataPlane(Registry(settings=settings), settings, [])
    with pytest.raises(ConfigError, match="pipeline 'fold': a shadow_writer needs a model"):
        Pipeline("fold", None, dataplane, shadow_writer=MemoryWriter())
    dataplane.registry.close()
