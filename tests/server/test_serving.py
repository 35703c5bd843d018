"""The prediction server end to end in-process: JSON API, limits, overload, alias swaps."""

from __future__ import annotations

import asyncio
import functools
import math
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import toy_models
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from starlette.testclient import TestClient

from modelport import ModelConfig, Registry, Service, ServiceConfig, Settings
from modelport.dataplane import DataPlane
from modelport.errors import FlavorError
from modelport.server import create_app
from modelport.settings import BatchingSettings, ServerSettings
from small_models import DropsFirstRow, Gated
from waiting import until


@pytest.fixture(scope="module")
def data() -> tuple[object, np.ndarray]:
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return X, y


@functools.cache
def fitted(c: float) -> object:
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return make_pipeline(StandardScaler(), LogisticRegression(C=c)).fit(X, y)


@pytest.fixture
def reg(settings: Settings) -> Iterator[Registry]:
    r = Registry(settings=settings)
    yield r
    r.close()


def cancer_model(reg: Registry, data: tuple[object, np.ndarray], c: float = 1.0) -> int:
    X, _ = data
    mv = reg.register("cancer", fitted(c), sample_input=X[:5])  # type: ignore[index]
    return mv.version


def toy(reg: Registry, name: str, obj: object) -> int:
    return reg.register(name, obj, sample_input=np.ones((2, 3))).version


def client(settings: Settings, reg: Registry, *configs: ModelConfig) -> TestClient:
    return TestClient(create_app(Service(settings, ServiceConfig(models=list(configs)), reg)))


def test_predict_rows_and_records_match_the_model(settings, reg, data) -> None:
    X, _ = data
    version = cancer_model(reg, data)
    reg.set_alias("cancer", "production", version)
    expected = reg.load("cancer@production").predict(X[:3])
    with client(settings, reg, ModelConfig(ref="cancer@production")) as c:
        by_rows = c.post("/models/cancer/predict", json={"instances": X.values[:3].tolist()})
        by_records = c.post("/models/cancer/predict",
                            json={"records": X[:3].to_dict(orient="records")})
    assert by_rows.status_code == 200, by_rows.text
    assert by_rows.json()["predictions"] == expected.tolist()
    assert by_records.json()["predictions"] == expected.tolist()
    assert by_rows.json()["model"] == "cancer" and by_rows.json()["version"] == version
    assert len(by_rows.json()["probabilities"][0]) == 2
    assert by_rows.headers["x-request-id"]


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b'{"rows": [[1]]}', 400, "instances"),
    (b'{"instances": [[1, 2, 3]]}', 400, "30 values"),
    (b'{"instances": [[1, 2], [1]]}', 400, "30 values"),
    (b'{"records": [{"mean radius": "big"}]}', 400, "missing field"),
])
def test_malformed_input_gets_400_naming_the_problem(settings, reg, data, body, status,
                                                     words) -> None:
    reg.set_alias("cancer", "production", cancer_model(reg, data))
    with client(settings, reg, ModelConfig(ref="cancer@production")) as c:
        r = c.post("/models/cancer/predict", content=body,
                   headers={"content-type": "application/json"})
        assert r.status_code == status
        assert words in r.json()["error"]
        # and the server keeps serving
        X, _ = data
        ok = c.post("/models/cancer/predict", json={"instances": X.values[:1].tolist()})
        assert ok.status_code == 200


def test_wrong_type_and_nan_name_the_column_and_row(settings, reg, data) -> None:
    X, _ = data
    reg.set_alias("cancer", "production", cancer_model(reg, data))
    records = X[:3].to_dict(orient="records")
    records[2]["mean texture"] = "abc"
    nan_rows = X.values[:2].tolist()
    nan_rows[1][0] = None
    with client(settings, reg, ModelConfig(ref="cancer@production")) as c:
        bad_type = c.post("/models/cancer/predict", json={"records": records})
        bad_nan = c.post("/models/cancer/predict", json={"instances": nan_rows})
        bare_nan = c.post("/models/cancer/predict",
                          content=b'{"instances": [[NaN' + b", 1" * 29 + b"]]}")
    assert bad_type.status_code == 400
    assert bad_type.json()["error"] == \
        "column 'mean texture': expected FP64, got string 'abc' at row 2"
    assert bad_nan.status_code == 400
    assert "'mean radius'" in bad_nan.json()["error"] and "row 1" in bad_nan.json()["error"]
    assert bare_nan.status_code == 400  # NaN is not JSON


def test_nan_outputs_are_answered_as_valid_json(settings, reg) -> None:
    toy(reg, "nanny", toy_models.NaNOut())
    with client(settings, reg, ModelConfig(ref="nanny:1", trusted=True)) as c:
        r = c.post("/models/nanny/predict", json={"instances": [[1, 2, 3], [4, 5, 6]]})
    assert r.status_code == 200
    body = orjson.loads(r.content)  # strict parser: a bare NaN would fail here
    assert body["predictions"] == [None, 15.0]


def test_unknown_paths_and_methods_answer_in_the_one_error_shape(settings, reg) -> None:
    toy(reg, "double", toy_models.Doubler())
    with client(settings, reg, ModelConfig(ref="double")) as c:
        missing = c.get("/no/such/thing")
        wrong_method = c.get("/models/double/predict")
        unknown_model = c.post("/models/nope/predict", json={"instances": [[1, 2, 3]]})
    assert missing.status_code == 404
    assert missing.json() == {"error": "not found: GET /no/such/thing"}
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"error": "method not allowed: GET /models/double/predict"}
    assert wrong_method.headers["allow"] == "POST"
    assert unknown_model.status_code == 404 and set(unknown_model.json()) == {"error"}


def test_body_over_the_limit_gets_413(settings, reg) -> None:
    settings.server = ServerSettings(max_body_bytes=1000)
    toy(reg, "doubler", toy_models.Doubler())
    with client(settings, reg, ModelConfig(ref="doubler:1", trusted=True)) as c:
        big = orjson.dumps({"instances": [[1.0, 2.0, 3.0]] * 200})
        declared = c.post("/models/doubler/predict", content=big)

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
            for i in range(0, len(big), 100):
                yield big[i:i + 100]

        streamed = c.post("/models/doubler/predict", content=chunks())
        small = c.post("/models/doubler/predict", json={"instances": [[1, 2, 3]]})
    assert declared.status_code == 413 and "limit of 1000 bytes" in declared.json()["error"]
    assert streamed.status_code == 413
    assert small.status_code == 200 and small.json()["predictions"] == [12.0]


async def _serve(settings: Settings, reg: Registry,
                 *configs: ModelConfig) -> tuple[DataPlane, httpx.AsyncClient]:
    service = Service(settings, ServiceConfig(models=list(configs)), reg, follow=False)
    app = create_app(service)
    await service.start()
    transport = httpx.ASGITransport(app=app)
    return service.dataplane, httpx.AsyncClient(transport=transport, base_url="http://mp")


@pytest.fixture
async def slow_server(settings: Settings, reg: Registry
                      ) -> AsyncIterator[tuple[DataPlane, httpx.AsyncClient]]:
    settings.batching = BatchingSettings(max_batch_size=1, max_queue=2)
    settings.server = ServerSettings(request_timeout_s=2)
    toy(reg, "slow", toy_models.SlowDoubler())
    dp, http = await _serve(settings, reg, ModelConfig(ref="slow:1", trusted=True))
    yield dp, http
    await http.aclose()
    await dp.stop()


async def test_full_queue_gets_a_fast_503_with_retry_after(slow_server) -> None:
    _, http = slow_server
    body = {"instances": [[1, 1, 1]]}
    answers = await asyncio.gather(*(http.post("/models/slow/predict", json=body)
                                     for _ in range(8)))
    statuses = sorted(r.status_code for r in answers)
    assert 503 in statuses and 200 in statuses
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["error"]
    metrics = (await http.get("/metrics")).text
    assert 'modelport_rejections_total{model="slow",reason="queue_full"}' in metrics
    # accepted requests are answered, none dropped or failed: at least the queue's worth
    assert set(statuses) == {200, 503} and statuses.count(200) >= 2


async def test_a_full_queue_refuses_before_reading_the_body(settings, reg) -> None:
    settings.batching = BatchingSettings(max_batch_size=1, max_queue=2)
    reg.register("gated", Gated(), sample_input=np.ones((1, 3)))
    service = Service(settings, ServiceConfig(models=[ModelConfig(ref="gated:1", trusted=True)]),
                      reg, follow=False)
    dp, app = service.dataplane, create_app(service)
    await service.start()
    model = type(dp.endpoints["gated"].current.model.flavor.model)
    gate, entered = model.gate, model.entered
    gate.clear()
    entered.clear()  # the smoke test's call
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mp")
    batcher = dp.endpoints["gated"].current.batcher

    def ask(i: int) -> asyncio.Task[httpx.Response]:
        return asyncio.create_task(http.post("/models/gated/predict",
                                             json={"instances": [[i, 0, 0]]}))

    admitted = [ask(0)]
    assert await asyncio.to_thread(entered.wait, 30)  # in the model, held at the gate
    admitted += [ask(1), ask(2)]
    await until(lambda: batcher.full, what="the queue filled")
    read: list[str] = []
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        read.append("body")
        return {"type": "http.request", "body": b'{"instances": [[1, 1, 1]]}'}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/models/gated/predict",
             "raw_path": b"/models/gated/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "http_version": "1.1",
             "scheme": "http", "server": ("mp", 80), "client": ("127.0.0.1", 1)}
    await app(scope, receive, send)
    gate.set()
    answers = await asyncio.gather(*admitted)
    await http.aclose()
    await service.stop()
    assert read == []  # refused from the queue's state alone
    assert sent[0]["status"] == 503
    assert [a.json()["predictions"] for a in answers] == [[0.0], [2.0], [4.0]]


async def test_request_past_its_deadline_gets_504(slow_server) -> None:
    dp, http = slow_server
    dp.settings.server = ServerSettings(request_timeout_s=0.1)
    r = await http.post("/models/slow/predict", json={"instances": [[1, 1, 1]]})
    assert r.status_code == 504
    assert "no prediction within" in r.json()["error"]


async def test_alias_moves_under_load_without_a_failed_request(settings, reg, data) -> None:
    X, _ = data
    v1 = cancer_model(reg, data, c=1.0)
    v2 = cancer_model(reg, data, c=0.01)
    reg.set_alias("cancer", "production", v1)
    dp, http = await _serve(settings, reg, ModelConfig(ref="cancer@production"))
    rows = {"instances": X.values[:1].tolist()}
    stop = asyncio.Event()
    answers: list[httpx.Response] = []

    async def load() -> None:
        while not stop.is_set():
            answers.append(await http.post("/models/cancer/predict", json=rows))

    async def answered(n: int) -> None:
        before = len(answers)
        await until(lambda: len(answers) >= before + n, what=f"{n} more answers")

    workers = [asyncio.create_task(load()) for _ in range(16)]
    for version in (v2, v1, v2, v1, v2):
        await asyncio.to_thread(reg.set_alias, "cancer", "production", version)
        await dp.refresh()
        await answered(20)  # by this version, before the alias moves again
    stop.set()
    await asyncio.gather(*workers)
    await http.aclose()
    await dp.stop()
    assert len(answers) > 50
    assert [r.status_code for r in answers if r.status_code != 200] == []
    assert {r.json()["version"] for r in answers} == {v1, v2}


async def test_a_version_that_fails_to_load_leaves_the_old_one_serving(settings, reg,
                                                                      monkeypatch) -> None:
    toy(reg, "m", toy_models.Doubler())
    toy(reg, "m", toy_models.BreaksOnLoad())
    monkeypatch.setenv("TOY_BROKEN", "1")  # registered fine; now its weights "rot"
    reg.set_alias("m", "production", 1)
    dp, http = await _serve(settings, reg, ModelConfig(ref="m@production", trusted=True))
    reg.set_alias("m", "production", 2)
    await dp.refresh()
    r = await http.post("/models/m/predict", json={"instances": [[1, 2, 3]]})
    ready = await http.get("/v2/health/ready")
    metrics = (await http.get("/metrics")).text
    await http.aclose()
    await dp.stop()
    assert r.status_code == 200 and r.json()["version"] == 1
    detail = ready.json()["models"]["m"]
    assert detail["version"] == 1 and "weights are corrupt" in detail["error"]
    assert 'modelport_model_loads_total{model="m",outcome="failed"} 1.0' in metrics


async def test_a_failed_load_is_retried_with_backoff_and_at_once_when_asked(
        settings, reg, monkeypatch) -> None:
    toy(reg, "m", toy_models.Doubler())
    toy(reg, "m", toy_models.BreaksOnLoad())
    toy(reg, "m", toy_models.BreaksOnLoad())
    monkeypatch.setenv("TOY_BROKEN", "1")
    reg.set_alias("m", "production", 1)
    dp, http = await _serve(settings, reg, ModelConfig(ref="m@production", trusted=True))

    def loads(outcome: str) -> float:
        return dp.metrics.model_loads.labels("m", outcome)._value.get()

    try:
        reg.set_alias("m", "production", 2)
        await dp.refresh()
        await dp.refresh()  # within the backoff: not tried again
        assert loads("failed") == 1 and dp.endpoints["m"].current.version == 1
        monkeypatch.delenv("TOY_BROKEN")  # the weights are back
        await dp.refresh(force=True)  # what POST /admin/refresh does
        assert dp.endpoints["m"].current.version == 2
        assert "error" not in (await http.get("/v2/health/ready")).json()["models"]["m"]

        monkeypatch.setenv("TOY_BROKEN", "1")
        reg.set_alias("m", "production", 3)
        await dp.refresh()
        assert "weights are corrupt" in dp.readiness()[1]["m"]["error"]
        reg.set_alias("m", "production", 2)  # moved back to what is served
        await dp.refresh()
        ready, detail = dp.readiness()
        assert (ready, detail["m"].keys()) == (True, {"ready", "version", "ref", "placement"})
        assert detail["m"]["version"] == 2  # and no error
    finally:
        await http.aclose()
        await dp.stop()


async def test_readiness_needs_every_model_and_liveness_needs_nothing(settings, reg) -> None:
    toy(reg, "here", toy_models.Doubler())
    dp, http = await _serve(settings, reg, ModelConfig(ref="here:1", trusted=True),
                            ModelConfig(ref="here@missing", name="other"))
    ready = await http.get("/v2/health/ready")
    other = await http.get("/v2/models/other/ready")
    live = await http.get("/v2/health/live")
    await http.aclose()
    await dp.stop()
    assert ready.status_code == 400 and ready.json()["ready"] is False
    assert ready.json()["models"]["here"]["ready"] is True
    # a 4xx like any other: what is wrong under "error"
    assert ready.json()["error"] == \
        "not ready: model other: here@missing: model 'here' has no alias 'missing'"
    assert other.status_code == 400 and other.json() == {
        "error": "model other is not ready: here@missing: model 'here' has no alias 'missing'",
        "name": "other", "ready": False}
    assert live.status_code == 200 and live.json() == {"live": True}


async def test_no_models_is_never_ready(settings, reg) -> None:
    _, http = await _serve(settings, reg)
    ready = await http.get("/v2/health/ready")
    await http.aclose()
    assert ready.status_code == 400
    assert ready.json()["error"] == "not ready: no models to serve"


def test_metrics_count_requests_and_batches(settings, reg) -> None:
    toy(reg, "doubler", toy_models.Doubler())
    with client(settings, reg, ModelConfig(ref="doubler:1", trusted=True)) as c:
        for _ in range(3):
            c.post("/models/doubler/predict", json={"instances": [[1, 2, 3]]})
        c.post("/models/doubler/predict", json={"instances": [[1, 2]]})
        text = c.get("/metrics").text
    assert ('modelport_requests_total{model="doubler",route="predict",status="200",'
            'version="1"} 3.0') in text
    assert 'status="400"' in text
    assert "modelport_batch_size_count" in text
    assert "modelport_request_seconds_bucket" in text
    assert not math.isnan(float(text.split("modelport_batch_size_sum")[1].split()[1]))


def test_openapi_shows_each_models_columns(settings, reg, data) -> None:
    reg.set_alias("cancer", "production", cancer_model(reg, data))
    with client(settings, reg, ModelConfig(ref="cancer@production")) as c:
        doc = c.get("/openapi.json").json()
        page = c.get("/docs")
        index = c.get("/")
    op = doc["paths"]["/models/cancer/predict"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    record = schema["properties"]["records"]["items"]
    assert record["properties"]["mean radius"]["type"] == "number"
    assert len(record["required"]) == 30
    refused = op["responses"]["400"]["content"]["application/json"]["schema"]
    assert refused["required"] == ["error"]  # the shape every error is answered in
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert "cancer@production" in index.text and "/docs" in index.text


async def test_models_can_run_in_worker_processes(settings, reg, data) -> None:
    X, _ = data
    reg.set_alias("cancer", "production", cancer_model(reg, data))
    expected = reg.load("cancer@production").predict(X[:8]).tolist()
    dp, http = await _serve(settings, reg, ModelConfig(ref="cancer@production", workers=2))
    deployment = dp.deployment("cancer")
    answers = await asyncio.gather(*(
        http.post("/models/cancer/predict", json={"instances": X.values[i:i + 1].tolist()})
        for i in range(8)))
    pids = await asyncio.gather(*(
        asyncio.get_running_loop().run_in_executor(deployment.executor, os.getpid)
        for _ in range(4)))
    await http.aclose()
    await dp.stop()
    assert [a.json()["predictions"][0] for a in answers] == expected
    assert deployment.batcher.concurrency == 2  # one batch in flight per process
    assert (deployment.placement.where, deployment.placement.reason) == \
        ("process", "workers: 2")
    assert os.getpid() not in pids


async def test_a_fast_model_can_run_on_the_event_loop(settings, reg, data) -> None:
    import threading

    X, _ = data
    reg.set_alias("cancer", "production", cancer_model(reg, data))
    expected = reg.load("cancer@production").predict(X[:8]).tolist()
    dp, http = await _serve(settings, reg, ModelConfig(ref="cancer@production", on_loop=True))
    model = dp.deployment("cancer").model
    threads: list[int] = []
    predict_batch = model.predict_batch

    def spy(batch: dict[str, np.ndarray], outputs: Any = None) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        return predict_batch(batch, outputs)

    model.predict_batch = spy  # type: ignore[method-assign]
    answers = await asyncio.gather(*(
        http.post("/models/cancer/predict", json={"instances": X.values[i:i + 1].tolist()})
        for i in range(8)))
    await http.aclose()
    await dp.stop()
    assert [a.json()["predictions"][0] for a in answers] == expected
    assert threads and set(threads) == {threading.get_ident()}  # no thread but the loop's


async def test_a_model_answering_the_wrong_rows_fails_its_callers_never_mixes_them(
        settings, reg) -> None:
    settings.batching = BatchingSettings(max_batch_size=64, max_delay_ms=5)
    reg.register("drops", DropsFirstRow(), sample_input=np.ones((1, 3)))
    dp, http = await _serve(settings, reg, ModelConfig(ref="drops:1", trusted=True))
    try:
        three = await http.post("/models/drops/predict",
                                json={"instances": [[10, 0, 0], [11, 0, 0], [12, 0, 0]]})
        # 32 one-row callers queued behind a held call: they make batches of several
        model = type(dp.endpoints["drops"].current.model.flavor.model)
        model.gate.clear()
        model.entered.clear()
        held = asyncio.create_task(
            http.post("/models/drops/predict", json={"instances": [[-1, 0, 0]]}))
        assert await asyncio.to_thread(model.entered.wait, 30)
        asking = [asyncio.create_task(
            http.post("/models/drops/predict", json={"instances": [[i, 0, 0]]}))
            for i in range(32)]
        batcher = dp.endpoints["drops"].current.batcher
        await until(lambda: batcher.depth == 32, what="the 32 callers queued")
        model.gate.set()
        assert (await held).json()["predictions"] == [-2.0]
        answers = await asyncio.gather(*asking)
        metrics = (await http.get("/metrics")).text
    finally:
        await http.aclose()
        await dp.stop()
    assert three.status_code == 500
    assert three.json() == {"error": "model drops:1 answered 2 rows of 'predictions' for a "
                                     "batch of 3 rows; no answer from it is used"}
    for i, answer in enumerate(answers):
        if answer.status_code == 200:  # a batch of one: its own answer, right
            assert answer.json()["predictions"] == [2.0 * i]
        else:
            assert answer.status_code == 500 and "answered" in answer.json()["error"]
    assert all(a.status_code == 500 for a in answers)  # one batch of 32: it failed whole
    assert 'modelport_model_output_row_errors_total{model="drops",version="1"}' in metrics


def test_registration_refuses_a_model_answering_the_wrong_rows_for_its_sample(reg) -> None:
    with pytest.raises(FlavorError, match="answered 4 rows of 'predictions' for a batch of 5"):
        reg.register("drops", DropsFirstRow(), sample_input=np.ones((5, 3)))
