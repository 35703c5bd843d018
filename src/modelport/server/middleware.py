"""Pure ASGI middleware: request ids, access logs and metrics; body size limits
(admission: `server.admission`)."""

from __future__ import annotations

import logging
import os
import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.errors import PayloadTooLarge
from modelport.monitoring.metrics import Metrics
from modelport.server.responses import error_response

access = logging.getLogger("modelport.access")
_CACHED = 1024  # label sets whose metric children RequestContext keeps at hand
# a request id in uuid4's form (what `uuid.uuid4().hex` gives), at half its cost
_UUID4_CLEAR = ~((0xf000 << 64) | (0xc000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_request_id() -> bytes:
    """A new request id, as `uuid.uuid4().hex` would make it."""
    return b"%032x" % (int.from_bytes(os.urandom(16), "big") & _UUID4_CLEAR | _UUID4_SET)


class RequestContext:
    """Give each request an id (from `X-Request-ID` or new), return it, log and count."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # labelled children, cached: `labels()` validates its arguments and takes a lock
        # on every call, and a server sees only a handful of label sets
        self._counts: dict[tuple[str, str, str, str], Counter] = {}
        self._timings: dict[tuple[str, str, str], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        raw_id = _raw_header(scope, b"x-request-id") or new_request_id()
        rid = raw_id.decode("latin-1")
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", raw_id)]
                if state.get("model") is not None and state.get("version") is not None:
                    # the version that answered: a canary's share names the canary
                    message["headers"].append(
                        (b"x-model-version", str(state["version"]).encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            model = state.get("model")
            if model is not None:  # only model routes are counted per model
                self._count(model, str(state.get("version", "")), state.get("route", ""),
                            status, elapsed)
            if access.isEnabledFor(logging.INFO):
                access.info("%s %s %s", scope["method"], scope["path"], status, extra={
                    "request_id": rid, "status": status, "ms": round(elapsed * 1000, 3),
                    "model": model, "version": state.get("version")})

    def _count(self, model: str, version: str, route: str, status: int,
               elapsed: float) -> None:
        key = (model, version, route)
        count_key = (*key, str(status))
        count = self._counts.get(count_key)
        if count is None:
            count = self.metrics.requests.labels(*count_key)
            if len(self._counts) < _CACHED:
                self._counts[count_key] = count
        count.inc()
        timing = self._timings.get(key)
        if timing is None:
            timing = self.metrics.latency.labels(*key)
            if len(self._timings) < _CACHED:
                self._timings[key] = timing
        timing.observe(elapsed)


class BodyLimit:
    """413 for bodies over `max_bytes`: at once from Content-Length, else while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes} bytes"

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(PayloadTooLarge(self._message()))
        response.headers["connection"] = "close"  # do not read the rest of the body
        await response(scope, receive, send)


def _raw_header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    value = _raw_header(scope, name)
    return None if value is None else value.decode("latin-1")
