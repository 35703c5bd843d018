"""The app factory: builds a server on a `Service`; nothing at import."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelport import __version__
from modelport.errors import ModelportError
from modelport.security import KeyStore
from modelport.server import admin, docs, predict, v2
from modelport.server import feedback as feedback_routes
from modelport.server import pipelines as pipeline_routes
from modelport.server.admission import Admission
from modelport.server.auth import ApiKeyGuard
from modelport.server.direct import ModelApp
from modelport.server.middleware import BodyLimit, RequestContext
from modelport.server.openapi import openapi_schema
from modelport.server.responses import (
    handle_error,
    handle_http_error,
    handle_validation_error,
)
from modelport.service import Service

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(service: Service, *, keys: KeyStore | None = None,
               extra_routes: Sequence[BaseRoute] = (),
               lifespan: Lifespan | None = None) -> FastAPI:
    """A server for `service`'s models and pipelines: starting it starts the service
    (unless it was started before: `modelport serve` starts and checks it first),
    stopping it stops the service, which drains the models.

    The service's pipelines get `POST /pipelines/{name}/run`; ground truth for
    predictions comes back through `POST /feedback`.

    `extra_routes` mount an application's own routes beside modelport's (a domain API
    over a pipeline, a web page): they are matched first, so one of them may take `/`,
    and with them a server without models is ready once started.
    `lifespan(app)` is the application's own start-up and shut-down (background tasks,
    connections): entered once the models are loaded and the pipelines started, exited
    before they are drained.

    Predictions (`POST /models/{name}/predict`, the v2 `infer` routes) take a short
    way past FastAPI's own layers to the same middleware and endpoints
    (`server.direct`); a middleware or an exception handler added to the returned app
    applies to them as to every route (they then take the ordinary way).

    `keys` are the API keys it accepts; by default those of the service's
    `settings.server.api_keys_file` (none when unset: then the admin API refuses every
    request).
    """
    settings, dataplane = service.settings, service.dataplane
    keys = keys if keys is not None else KeyStore.from_settings(settings)

    @contextlib.asynccontextmanager
    async def serve(app: FastAPI) -> AsyncIterator[None]:
        if not service.started:
            await service.start()
        service.settle()  # the models, their libraries and the app are loaded for good
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            await app.state.guards.stop()
            await service.stop()

    async def metrics(request: Request) -> Response:
        for name, ep in dataplane.endpoints.items():
            depth = ep.current.batcher.depth if ep.current else 0
            dataplane.metrics.queue_depth.labels(name).set(depth)
        return Response(dataplane.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    routes: list[Any] = [
        *extra_routes,
        Route("/", predict.index, methods=["GET"], include_in_schema=False),
        Route("/models/{name}/predict", predict.predict, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"], include_in_schema=False),
        *v2.routes,
        *admin.routes,
        *pipeline_routes.routes,
        *feedback_routes.routes,
        *docs.routes(),
    ]
    app = ModelApp(
        title="modelport",
        version=__version__,
        docs_url=None,  # served from packaged assets instead of a CDN (server.docs)
        redoc_url=None,
        # FastAPI's telemetry hooks read the environment on every request; we export
        # our own metrics and logs
        telemetry={"tracing": False, "metrics": False, "logs": False},
        lifespan=serve,
        routes=routes,
        middleware=[
            Middleware(RequestContext, metrics=dataplane.metrics),
            # inside RequestContext, so refusals get a request id and an access log line
            Middleware(ApiKeyGuard, keys=keys,
                       require_predict_key=settings.server.require_predict_key),
            # after the key check, before anything reads the body
            Middleware(Admission, dataplane=dataplane, keys=keys,
                       require_predict_key=settings.server.require_predict_key),
            Middleware(BodyLimit, max_bytes=settings.server.max_body_bytes),
        ],
        exception_handlers={ModelportError: handle_error, HTTPException: handle_http_error,
                            RequestValidationError: handle_validation_error,
                            Exception: handle_error},
    )
    app.take_short_way(first_routes=extra_routes)  # predictions skip FastAPI's layers
    app.state.service = service
    app.state.guards = admin.Guards()
    app.state.dataplane = dataplane
    # for the HTTP protocol, which refuses from a request's head (server.run)
    app.state.admission = Admission(None, dataplane, keys, settings.server.require_predict_key)
    # an application's own routes are something to serve, models or not
    dataplane.ready_without_models = bool(extra_routes)
    app.state.pipelines = service.pipelines
    app.state.settings = settings
    app.openapi = lambda: openapi_schema(app, dataplane)  # type: ignore[method-assign]
    return app
