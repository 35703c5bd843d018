"""An application's own routes and lifespan mounted on a modelport server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from modelport import Registry, Settings
from modelport.dataplane import DataPlane
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

    dp = DataPlane(Registry(settings=settings), settings, [])
    app = create_app(settings, dp, follow=False, lifespan=lifespan,
                     extra_routes=[Route("/", page, methods=["GET"])])
    with TestClient(app) as client:
        assert client.get("/").text == "hello music"  # the app's page, not modelport's
        assert client.get("/v2/health/live").status_code == 200
        # no models to load: an application's own service is ready once started
        assert client.get("/v2/health/ready").status_code == 200
        assert events == ["start"]
    assert events == ["start", "stop"]
