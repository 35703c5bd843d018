"""Predictions take a short way past FastAPI's layers (`server.direct`): the same
answers as the ordinary way, and the ordinary way whenever the app was changed."""

from __future__ import annotations

from typing import Any

import pytest
import toy_models
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport import ModelConfig, Registry, Service, ServiceConfig, Settings
from modelport.errors import ModelNotFound
from modelport.server import create_app
from modelport.settings import ServerSettings


@pytest.fixture
def served(settings: Settings) -> Settings:
    settings.server = ServerSettings(max_body_bytes=1000)
    with Registry(settings=settings) as registry:
        version = registry.register("double", toy_models.Doubler(),
                                    sample_input=[[1.0, 2.0, 3.0]]).version
        registry.set_alias("double", "production", version)
    return settings


def app_for(settings: Settings, **kwargs: Any) -> FastAPI:
    config = ServiceConfig(models=[ModelConfig(ref="double@production", trusted=True)])
    return create_app(Service(settings, config), **kwargs)


class Stamp:
    """A middleware an application adds after create_app: stamps every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-stamp", b"yes")]
            await send(message)

        await self.app(scope, receive, stamped)


V2 = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]}
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/models/double/predict", {"json": {"instances": [[1, 2, 3], [0, 0, 1]]}}),
    ("/models/double/predict", {"json": {"outputs": ["predictions"], "instances": [[1, 1, 1]]}}),
    ("/v2/models/double/infer", {"json": V2}),
    ("/v2/models/double/versions/1/infer", {"json": V2}),
    ("/v2/models/double/versions/7/infer", {"json": V2}),  # no such version
    ("/models/nope/predict", {"json": {"instances": [[1, 2, 3]]}}),  # no such model
    ("/models/double/predict", {"content": b"{not json"}),
    ("/models/double/predict", {"json": {"rows": [[1, 2, 3]]}}),
    ("/models/double/predict", {"json": {"instances": [[1, 2]]}}),  # a column short
    ("/models/double/predict", {"content": b"[" + b"1," * 600 + b"1]"}),  # over 1000 bytes
    ("/v2/models/double/infer", {"content": b"{}"}),
]


def answers(client: TestClient) -> list[tuple[int, Any, bool, str | None]]:
    out = []
    for path, body in REQUESTS:
        answer = client.post(path, **body)
        out.append((answer.status_code, answer.json(), "x-request-id" in answer.headers,
                    answer.headers.get("x-model-version")))
    return out


def test_predictions_answer_the_same_either_way(served: Settings) -> None:
    with TestClient(app_for(served)) as client:
        short = answers(client)
    ordinary_app = app_for(served)
    ordinary_app.add_middleware(Stamp)  # which sends predictions the ordinary way
    with TestClient(ordinary_app) as client:
        ordinary = answers(client)
    assert short == ordinary
    statuses = [status for status, *_ in short]
    assert statuses == [200, 200, 200, 200, 404, 404, 400, 400, 400, 413, 400]
    assert short[0][1]["predictions"] == [12.0, 2.0] and short[0][3] == "1"
    assert short[2][1]["outputs"][0]["data"] == [12.0]
    assert all(has_id for _, _, has_id, _ in short)


def test_a_middleware_added_after_create_app_sees_predictions(served: Settings) -> None:
    app = app_for(served)
    app.add_middleware(Stamp)
    with TestClient(app) as client:
        for path, body in REQUESTS[:3]:
            answer = client.post(path, **body)
            assert answer.status_code == 200 and answer.headers["x-stamp"] == "yes"


def test_an_exception_handler_added_after_create_app_answers_predictions(
        served: Settings) -> None:
    async def unknown(request: Request, exc: Exception) -> Response:
        return JSONResponse({"mine": str(exc)}, status_code=410)

    app = app_for(served)
    app.add_exception_handler(ModelNotFound, unknown)
    with TestClient(app) as client:
        answer = client.post("/models/nope/predict", json={"instances": [[1, 2, 3]]})
    assert answer.status_code == 410 and "nope" in answer.json()["mine"]


def test_an_applications_own_route_at_a_prediction_path_comes_first(
        served: Settings) -> None:
    async def own(request: Request) -> Response:
        return PlainTextResponse("the application's own")

    app = app_for(served, extra_routes=[Route("/models/double/predict", own,
                                              methods=["POST"])])
    with TestClient(app) as client:
        mine = client.post("/models/double/predict", json={"instances": [[1, 2, 3]]})
        theirs = client.post("/v2/models/double/infer", json=V2)
    assert mine.text == "the application's own"
    assert theirs.status_code == 200 and theirs.json()["outputs"][0]["data"] == [12.0]


def test_a_prediction_path_with_another_method_is_refused_by_the_router(
        served: Settings) -> None:
    with TestClient(app_for(served)) as client:
        answer = client.get("/models/double/predict")
    assert answer.status_code == 405 and answer.json() == {
        "error": "method not allowed: GET /models/double/predict"}
