"""An application's own routes and lifespan mounted on a modelport server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from modelport import Service, Settings
from modelport.server import create_app


def test_extra_routes_come_first_and_lifespan_wraps_serving(settings: Settings) -> None:
    events: list[str] = []

    async def page(request: Request) -> Response:
        return PlainTextResponse(f"hello {request.app.state.greeting}")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("start")
        app.state.greeting = "music"
        yield
        events.append("stop")

    app = create_app(Service(settings, follow=False), lifespan=lifespan,
                     extra_routes=[Route("/", page, methods=["GET"])])
    with TestClient(app) as client:
        assert client.get("/").text == "hello music"  # the app's page, not modelport's
        assert client.get("/v2/health/live").status_code == 200
        # no models to load: an application's own service is ready once started
        assert client.get("/v2/health/ready").status_code == 200
        assert events == ["start"]
    assert events == ["start", "stop"]


class Play(BaseModel):
    track: int
    seconds: float


def test_a_typed_routes_refusals_come_in_the_one_error_shape(settings: Settings) -> None:
    router = APIRouter()

    @router.post("/plays/{user}")
    async def play(user: int, body: Play) -> dict[str, int]:
        return {"user": user, "track": body.track}

    app = create_app(Service(settings, follow=False), extra_routes=router.routes)
    with TestClient(app) as client:
        ok = client.post("/plays/7", json={"track": 3, "seconds": 1.5})
        wrong = client.post("/plays/seven", json={"track": "three"})
    assert ok.status_code == 200 and ok.json() == {"user": 7, "track": 3}
    assert wrong.status_code == 422
    assert wrong.json() == {"error": (
        "invalid request: path.user: Input should be a valid integer, unable to parse "
        "string as an integer (got 'seven'); body.track: Input should be a valid integer, "
        "unable to parse string as an integer (got 'three'); body.seconds: Field required")}
    # and the OpenAPI document describes that 422 as it is answered
    schema = app.openapi()
    refused = schema["paths"]["/plays/{user}"]["post"]["responses"]["422"]
    ref = refused["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert schema["components"]["schemas"][ref]["required"] == ["error"]
    assert "ValidationError" not in schema["components"]["schemas"]
