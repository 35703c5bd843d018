"""The prediction routes' short way through the app.

Predictions are most of what a server answers, and FastAPI's own layers (its error
and exception middleware, telemetry hook, exit stack and the router's match over every
route) do nothing for them but took a fifth of their CPU time under load. So
`ModelApp` sends `POST /models/{name}/predict` and `POST /v2/models/{name}[/versions/
{version}]/infer` straight into the same middleware (request context, key check,
admission, body limit) and endpoints as the ordinary way, answering their errors with
the same handlers.

Every other request takes the ordinary way, and so does every request once the app was
changed after `create_app` (a middleware or an exception handler added, a root path
set), or when one of an application's own routes, which are matched first, matches
the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI
from starlette._utils import get_route_path  # the router's own path: same match
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport.server import predict, v2
from modelport.server.admission import PREDICTION_PATH
from modelport.server.responses import handle_error, handle_http_error

Endpoint = Callable[[Request], Awaitable[Response]]


class ModelApp(FastAPI):
    """FastAPI, with predictions sent the short way (`direct`)."""

    _direct: _Direct | None = None
    _expected: tuple[list[Middleware], dict[Any, Any], Sequence[BaseRoute]] | None = None

    def take_short_way(self, first_routes: Sequence[BaseRoute]) -> None:
        """Send predictions the short way while the app keeps its middleware and
        handlers as they are now; `first_routes` are matched before ours."""
        self._expected = (list(self.user_middleware), dict(self.exception_handlers),
                          first_routes)

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        self._direct = None
        if self._expected is not None:
            middleware, handlers, first_routes = self._expected
            # (Middleware compares by identity.) FastAPI puts its own root_path in the
            # scope: an app given one goes the ordinary way rather than repeat that here
            if middleware == self.user_middleware and handlers == self.exception_handlers \
                    and not self.root_path:
                self._direct = _Direct(middleware, first_routes)
        return stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = self._direct
        if direct is not None and scope["type"] == "http" and scope["method"] == "POST" \
                and direct.route(scope):
            scope["app"] = self
            await direct.chain(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class _Direct:
    """The middleware chain around the prediction endpoints, and their match."""

    def __init__(self, middleware: Sequence[Middleware],
                 first_routes: Sequence[BaseRoute]) -> None:
        app: ASGIApp = _answer
        for cls, args, kwargs in reversed(middleware):
            app = cls(app, *args, **kwargs)
        self.chain = app
        self.first_routes = first_routes

    def route(self, scope: Scope) -> bool:
        """Whether this is a prediction taken the short way; if so, its endpoint and
        path parameters are put in the scope, as the router would."""
        match = PREDICTION_PATH.fullmatch(get_route_path(scope))
        if match is None:
            return False
        if self.first_routes and any(route.matches(scope)[0] is not Match.NONE
                                     for route in self.first_routes):
            return False
        if match[1] is not None:
            scope["endpoint"], scope["path_params"] = predict.predict, {"name": match[1]}
        else:
            params = {"name": match[2]} if match[3] is None else \
                {"name": match[2], "version": match[3]}
            scope["endpoint"], scope["path_params"] = v2.infer, params
        return True


async def _answer(scope: Scope, receive: Receive, send: Send) -> None:
    """Run the endpoint; an error is answered as the app's handlers answer it."""
    request = Request(scope, receive, send)
    endpoint: Endpoint = scope["endpoint"]
    try:
        response = await endpoint(request)
    except HTTPException as exc:
        response = await handle_http_error(request, exc)
    except Exception as exc:
        response = await handle_error(request, exc)
    await response(scope, receive, send)
