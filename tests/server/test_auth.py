"""The API-key guard as plain ASGI: which paths need which scope, and how it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from modelport.security import KeyStore, add_key
from modelport.server.auth import ApiKeyGuard, presented_key, required_scope


@pytest.mark.parametrize(("path", "strict", "scope"), [
    ("/admin/models", False, "admin"),
    ("/admin", False, "admin"),
    ("/adminx", False, "admin"),
    ("/admin/models\n", False, "admin"),
    ("/models/m/predict", False, None),
    ("/v2/models/m/infer", False, None),
    ("/models/m/predict", True, "predict"),
    ("/models/m/predict\n", True, "predict"),  # Starlette's "$" matches before "\n"
    ("/v2/models/m/infer", True, "predict"),
    ("/v2/models/m/versions/3/infer", True, "predict"),
    ("/v2/models/m", True, "predict"),
    ("/pipelines/recommend/run", True, "predict"),
    ("/anything-new", True, "predict"),
    ("/metrics\n", True, "predict"),  # not the open route: fail closed
    ("/", True, None),
    ("/docs", True, None),
    ("/docs/assets/swagger-ui.css", True, None),
    ("/redoc", True, "predict"),  # gone: no longer open
    ("/openapi.json", True, None),
    ("/metrics", True, None),
    ("/v2", True, None),
    ("/v2/health/live", True, None),
    ("/v2/health/ready", True, None),
])
def test_required_scope(path: str, strict: bool, scope: str | None) -> None:
    assert required_scope(path, strict) == scope


@pytest.mark.parametrize(("headers", "key"), [
    ([], None),
    ([(b"authorization", b"Bearer abc")], "abc"),
    ([(b"authorization", b"bearer   abc  ")], "abc"),
    ([(b"authorization", b"Basic abc")], None),
    ([(b"authorization", b"Bearer ")], None),
    ([(b"x-api-key", b"abc")], "abc"),
    ([(b"x-api-key", b"  ")], None),
    ([(b"x-api-key", b"xyz"), (b"authorization", b"Bearer abc")], "abc"),
    ([(b"authorization", b"Basic u:p"), (b"x-api-key", b"xyz")], "xyz"),
])
def test_presented_key(headers: list[tuple[bytes, bytes]], key: str | None) -> None:
    assert presented_key({"headers": headers}) == key


class Recorder:
    """An inner app that records what reached it, and the send side of a request."""

    def __init__(self) -> None:
        self.reached: list[Scope] = []
        self.sent: list[Message] = []

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached.append(scope)

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> Any:
        return orjson.loads(self.sent[1]["body"])


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def http(path: str, root_path: str = "", key: str | None = None) -> Scope:
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    return {"type": "http", "method": "GET", "path": path, "root_path": root_path,
            "headers": headers, "query_string": b""}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[KeyStore, str]:
    key = add_key(tmp_path / "keys.yaml", "ops", ["admin"])
    return KeyStore.load(tmp_path / "keys.yaml"), key


async def test_behind_a_root_path_admin_is_still_guarded(keys: tuple[KeyStore, str]) -> None:
    store, key = keys
    rec = Recorder()
    guard = ApiKeyGuard(rec.app, store, require_predict_key=False)
    # mounted under /api: the router matches "/admin/models", so must the guard
    await guard(http("/api/admin/models", root_path="/api"), receive, rec.send)
    assert rec.status == 401
    assert rec.reached == []
    await guard(http("/api/admin/models", root_path="/api", key=key), receive, rec.send)
    assert rec.reached[0]["state"] == {"api_key": "ops"}


async def test_lifespan_and_open_paths_pass_untouched(keys: tuple[KeyStore, str]) -> None:
    store, _ = keys
    rec = Recorder()
    guard = ApiKeyGuard(rec.app, store, require_predict_key=False)
    await guard({"type": "lifespan"}, receive, rec.send)
    await guard(http("/models/m/predict"), receive, rec.send)
    assert len(rec.reached) == 2
    assert "state" not in rec.reached[1]  # no key checked, nothing recorded
    assert rec.sent == []


async def test_websockets_are_closed_without_a_key(keys: tuple[KeyStore, str]) -> None:
    store, _ = keys
    rec = Recorder()
    guard = ApiKeyGuard(rec.app, store, require_predict_key=True)
    scope = {**http("/models/m/stream"), "type": "websocket"}
    await guard(scope, receive, rec.send)
    assert rec.sent == [{"type": "websocket.close", "code": 1008}]
    assert rec.reached == []
