"""The pipeline core with injected in-memory components, and its HTTP trigger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelport import Registry, Settings
from modelport.config import ServiceConfig, load_config
from modelport.dataplane import DataPlane, ModelConfig
from modelport.errors import ConfigError
from modelport.pipeline import Frame, MemoryRetriever, MemoryWriter, Pipeline
from modelport.pipeline.pipeline import validate_rows
from modelport.server import create_app
from modelport.service import Service
from modelport.signature import FieldSpec, Signature
from small_models import DropsFirstRow, cancer


@pytest.fixture
def reg(settings: Settings) -> Registry:
    X, clf = cancer()
    r = Registry(settings=settings)
    mv = r.register("cancer", clf, sample_input=X[:5])  # type: ignore[index]
    r.set_alias("cancer", "production", mv.version)
    return r


def patients(n: int = 5) -> dict[int, dict[str, float]]:
    X, _ = cancer()
    return {1000 + i: row for i, row in enumerate(X[:n].to_dict(orient="records"))}  # type: ignore[index]


def add_flag(frame: Frame) -> Frame:
    frame.columns["flagged"] = np.asarray(frame.columns["probabilities"])[:, 0] > 0.5
    return frame


async def test_run_retrieves_scores_writes_and_reports_missing_keys(settings, reg) -> None:
    X, clf = cancer()
    rows = patients()
    rows[1003]["mean radius"] = "oops"  # type: ignore[assignment]
    retriever, writer = MemoryRetriever(rows), MemoryWriter()
    dp = DataPlane(reg, settings, [ModelConfig(ref="cancer@production")])
    await dp.start(follow=False)
    pipe = Pipeline("score", "cancer", dp, retriever=retriever, writer=writer, post=add_flag)
    results = await pipe.run([1000, 1001, 1003, 42])
    await dp.stop()
    expected = clf.predict(X[:2])  # type: ignore[attr-defined,index]
    assert [results[1000]["predictions"], results[1001]["predictions"]] == expected.tolist()
    assert results[42] == {"error": "no data for key 42"}
    assert results[1003]["error"] == "column 'mean radius': expected FP64, got string 'oops'"
    assert retriever.calls == [[1000, 1001, 1003, 42]]  # one lookup for all keys
    assert set(writer.rows) == {1000, 1001}  # the rejected row is not written
    assert isinstance(writer.rows[1000]["flagged"], bool)


def test_http_trigger_from_yaml_with_injected_components(settings, reg,
                                                         tmp_path: Path) -> None:
    config_file = tmp_path / "modelport.yaml"
    config_file.write_text("""
pipelines:
  - name: score
    model: cancer@${ALIAS}
    retriever: {type: memory, rows: {}}
    writer: {type: memory}
""")
    config = load_config(config_file, {"ALIAS": "production"})
    service = Service(settings, config, reg)
    service.pipelines["score"].retriever = MemoryRetriever(patients(3))  # injected by a test
    app = create_app(service)
    with TestClient(app) as c:
        one = c.post("/pipelines/score/run", json={"key": 1001})
        many = c.post("/pipelines/score/run", json={"keys": [1000, 7]})
        bad = c.post("/pipelines/score/run", json={"keyz": [1]})
        unknown = c.post("/pipelines/nope/run", json={"key": 1})
        spec = c.get("/openapi.json").json()
    assert one.status_code == 200, one.text
    assert one.json()["result"]["predictions"] in (0, 1) and one.json()["version"] == 1
    assert many.json()["results"][1] == {"key": 7, "error": "no data for key 7"}
    assert bad.status_code == 400 and "key" in bad.json()["error"]
    assert unknown.status_code == 404
    assert "/pipelines/{name}/run" in spec["paths"]
    assert len(service.pipelines["score"].writer.rows) == 2  # type: ignore[union-attr]


def test_config_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "modelport.yaml"
    path.write_text("pipelines:\n  - name: p\n    model: m@production\n"
                    "    retriever: {type: nosuch}\n")
    config = load_config(path, {})
    with pytest.raises(ConfigError, match=r"p.retriever.type: unknown component 'nosuch'"):
        Service(Settings(home=tmp_path), config, None)  # type: ignore[arg-type]
    path.write_text("pipelines:\n  - name: p\n")
    with pytest.raises(ConfigError, match=r"modelport.yaml: pipelines.0.model: Field required"):
        load_config(path, {})
    path.write_text("models:\n  - ref: ${MISSING}\n")
    with pytest.raises(ConfigError, match=r"models\[0\].ref: \$\{MISSING\} is not set"):
        load_config(path, {})
    assert isinstance(ServiceConfig(), ServiceConfig)


async def test_rows_a_model_answers_wrongly_are_rejected_not_written(settings, reg) -> None:
    reg.register("drops", DropsFirstRow(), sample_input=np.ones((1, 3)))
    dp = DataPlane(reg, settings, [ModelConfig(ref="drops:1", trusted=True)])
    await dp.start(follow=False)
    writer = MemoryWriter()
    pipe = Pipeline("score", "drops", dp, writer=writer)
    frame = Frame([7, 8, 9], {"input": np.asarray([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])})
    try:
        scored = await pipe.score(frame)
        await pipe.write(scored)
    finally:
        await dp.stop()
    assert writer.rows == {}
    assert [r.key for r in scored.rejects] == [7, 8, 9]
    assert scored.rejects[0].reason == ("model drops:1 answered 2 rows of 'predictions' for a "
                                        "batch of 3 rows; no answer from it is used")


def test_validate_rows_sets_misfits_aside_naming_the_field() -> None:
    signature = Signature(layout="columns",
                          inputs=[FieldSpec(name="a", datatype="FP64"),
                                  FieldSpec(name="b", datatype="FP64")])
    fine = {"a": np.asarray([1.0, 2.0]), "b": np.asarray([3.0, 4.0])}
    batch, good, rejects = validate_rows(signature, ["x", "y"], fine)
    assert batch is not None and good == [0, 1] and rejects == []
    mixed = {"a": [1.0, "oops", 3.0], "b": [4.0, 5.0, 6.0]}
    batch, good, rejects = validate_rows(signature, ["x", "y", "z"], mixed)
    assert batch is not None and batch["a"].tolist() == [1.0, 3.0]
    assert good == [0, 2]
    assert [(r.key, r.reason) for r in rejects] == [
        ("y", "column 'a': expected FP64, got string 'oops'")]
    batch, good, rejects = validate_rows(signature, ["y"], {"a": ["oops"], "b": [5.0]})
    assert batch is None and good == [] and [r.key for r in rejects] == ["y"]
