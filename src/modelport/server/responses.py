"""JSON responses and error translation shared by every route."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from modelport.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelportError,
    Overloaded,
    PayloadTooLarge,
)

log = logging.getLogger("modelport.server")

# orjson writes NaN/inf as null, so every answer is valid JSON
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=_OPTIONS)


def error_response(exc: ModelportError) -> JSON:
    headers = {"Retry-After": f"{max(1, round(exc.retry_after))}"} \
        if isinstance(exc, Overloaded) else None
    return JSON({"error": exc.message}, status_code=exc.status_code, headers=headers)


_REJECTIONS: dict[type[ModelportError], str] = {
    Overloaded: "queue_full", DeadlineExceeded: "deadline",
    PayloadTooLarge: "body_too_large", InvalidInput: "invalid_input",
}


async def handle_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ModelportError):
        reason = _REJECTIONS.get(type(exc))
        model = getattr(request.state, "model", None)
        if reason and model:
            request.app.state.dataplane.metrics.rejections.labels(model, reason).inc()
        if exc.status_code >= 500 and reason is None:
            log.warning("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(exc)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSON({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


async def handle_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, a method the route does not take) in
    the shape of every other error: `{"error": …}`, keeping their headers (`Allow`)."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    message = {404: f"not found: {where}",
               405: f"method not allowed: {where}"}.get(exc.status_code, exc.detail)
    return JSON({"error": message}, status_code=exc.status_code, headers=exc.headers)


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's refusal of a typed route's input (an application's own routes beside
    ours): the same 422, with what is wrong in one line, in the shape of every other
    error instead of FastAPI's `{"detail": [...]}`."""
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(_problem(error) for error in exc.errors())
    return JSON({"error": f"invalid request: {problems}"}, status_code=422)


def _problem(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    got = f" (got {error['input']!r})" if "input" in error and error["type"] != "missing" \
        else ""
    return f"{where}: {error.get('msg', 'invalid')}{got}"


async def read_json(request: Request) -> Any:
    """The request body as JSON, or a 400 that says what is wrong with it."""
    body = await request.body()
    if not body:
        raise InvalidInput("request body is empty: expected JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
