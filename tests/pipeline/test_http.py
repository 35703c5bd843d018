"""The HTTP retriever: contracts and retry rules on a mock transport, then a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modelport.errors import ConfigError, ModelportError, NotReady
from modelport.pipeline.http import HttpRetriever

FEATURES = {"1001": {"age": 31, "plays": 12.5}, "1002": {"age": 45, "plays": 3.0}}


def mock(handler: Callable[[httpx.Request], Any]) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


def retriever(transport: httpx.MockTransport, url: str = "http://features/rows",
              **options: Any) -> HttpRetriever:
    return HttpRetriever(url, backoff=0.001, transport=transport, **options)


async def test_batch_contract_with_rows_by_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        keys = orjson.loads(request.content)["keys"]
        return httpx.Response(200, json={"rows": {str(k): FEATURES[str(k)]
                                                  for k in keys if str(k) in FEATURES}})

    r = retriever(mock(handler), headers={"Authorization": "Bearer t0ken"})
    await r.start()
    frame = await r.get([1001, 7, "1002"])
    await r.close()
    assert len(seen) == 1 and seen[0].method == "POST"  # all keys, one request
    assert orjson.loads(seen[0].content) == {"keys": [1001, 7, "1002"]}
    assert seen[0].headers["authorization"] == "Bearer t0ken"
    assert frame.keys == [1001, "1002"]  # the caller's keys, typed as the caller sent them
    assert frame.columns["age"].tolist() == [31, 45]
    assert frame.columns["plays"].dtype.kind == "f"


@pytest.mark.parametrize("wrapped", [True, False])
async def test_batch_contract_with_a_list_of_records(wrapped: bool) -> None:
    records = [{"user": k, **v} for k, v in FEATURES.items()] + [{"user": "999", "age": 1}]
    body = {"rows": records} if wrapped else records
    r = retriever(mock(lambda _: httpx.Response(200, json=body)), key="user")
    frame = await r.get(["1001", "1002"])
    assert frame.keys == ["1001", "1002"]  # a row nobody asked for is dropped
    assert "user" not in frame.columns and frame.columns["age"].tolist() == [31, 45]


@pytest.mark.parametrize("failure", [
    lambda: httpx.Response(503, text="busy"),
    lambda: httpx.Response(500),
    lambda: (_ for _ in ()).throw(httpx.ConnectError("refused")),
    lambda: (_ for _ in ()).throw(httpx.ReadTimeout("slow")),
])
async def test_transient_failures_are_retried_then_succeed(failure: Callable[[], Any]) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            return failure()  # type: ignore[no-any-return]
        return httpx.Response(200, json={"rows": FEATURES})

    frame = await retriever(mock(handler), retries=3).get(["1001"])
    assert calls == 3 and frame.keys == ["1001"]


async def test_retries_run_out_into_a_503_naming_the_service_without_password() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused")

    r = retriever(mock(handler), url="http://bob:pa55@features:8080/rows", retries=2)
    with pytest.raises(NotReady) as info:
        await r.get([1])
    assert calls == 3  # the first try and two retries
    assert info.value.message == (
        "HTTP service http://bob:***@features:8080/rows is unavailable: connection refused")
    assert info.value.status_code == 503


async def test_a_4xx_is_never_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(422, json={"detail": "keys must be strings"})

    with pytest.raises(ModelportError) as info:
        await retriever(mock(handler), retries=5).get([1])
    assert calls == 1
    assert info.value.status_code == 502
    assert "answered 422 Unprocessable Entity" in info.value.message
    assert "keys must be strings" in info.value.message


@pytest.mark.parametrize(("body", "says"), [
    (b"<html>", "not JSON"),
    (b'{"rows": 3}', "a JSON int under 'rows'"),
    (b'[{"name": "x"}]', "records without the key field"),
    (b'{"rows": {"1": 5}}', "a JSON int for key '1'"),
])
async def test_answers_outside_the_contract_are_502s(body: bytes, says: str) -> None:
    r = retriever(mock(lambda _: httpx.Response(200, content=body)))
    with pytest.raises(ModelportError, match=says) as info:
        await r.get([1])
    assert info.value.status_code == 502


async def test_per_key_template_gets_with_bounded_concurrency() -> None:
    in_flight = peak = 0
    paths: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        paths.append(request.url.raw_path.decode())
        key = request.url.path.rsplit("/", 1)[1]
        if key in FEATURES:
            return httpx.Response(200, json=FEATURES[key])
        return httpx.Response(404)

    r = retriever(mock(handler), url="http://users/api/users/{key}", concurrency=3)
    keys = [1001, "1002", *range(10), "a/b"]
    frame = await r.get(keys)
    assert frame.keys == [1001, "1002"]
    assert peak == 3 and len(paths) == len(keys)
    assert "/api/users/a%2Fb" in paths  # a key is one path segment, escaped
    assert r.method == "GET"


async def test_per_key_failure_fails_the_call() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401 if request.url.path.endswith("/2") else 200, json={"a": 1})

    with pytest.raises(ModelportError, match="answered 401"):
        await retriever(mock(handler), url="http://users/{key}").get([1, 2, 3])


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        HttpRetriever("http://x/{key}", concurrency=0)


# --- a real server on a loopback socket ------------------------------------------------


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


async def rows(request: Request) -> JSONResponse:
    keys = (await request.json())["keys"]
    return JSONResponse({"rows": {k: FEATURES[k] for k in map(str, keys) if k in FEATURES}})


async def user(request: Request) -> JSONResponse:
    key = request.path_params["key"]
    if key not in FEATURES:
        return JSONResponse({"error": "no such user"}, status_code=404)
    return JSONResponse(FEATURES[key])


async def test_a_real_server_both_contracts_then_gone() -> None:
    app = Starlette(routes=[Route("/rows", rows, methods=["POST"]),
                            Route("/users/{key}", user)])
    with serving(app) as base:
        batch = HttpRetriever(f"{base}/rows", backoff=0.01)
        each = HttpRetriever(f"{base}/users/{{key}}", backoff=0.01)
        await batch.start()
        await each.start()
        a = await batch.get([1001, 1002, 5])
        b = await each.get(["1002", "5"])
    assert a.keys == [1001, 1002] and a.columns["plays"].tolist() == [12.5, 3.0]
    assert b.keys == ["1002"] and b.columns["age"].tolist() == [45]
    with pytest.raises(NotReady, match=f"HTTP service {base}/rows is unavailable"):
        await batch.get([1001])  # the server is gone: retried, then a clear 503
    await batch.close()
    await each.close()


async def test_a_service_that_accepts_no_connection_is_refused_at_start() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        up = HttpRetriever(f"http://127.0.0.1:{listening.getsockname()[1]}/users/{{key}}")
        await up.start()  # accepts connections: nothing more is asked of it
        await up.check()
        await up.close()
    with socket.socket() as bound:  # bound, not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}/rows"
        down = HttpRetriever(url)
        with pytest.raises(NotReady, match=f"^HTTP service {url} is unavailable: "):
            await down.start()
        with pytest.raises(NotReady, match=f"^HTTP service {url} is unavailable: "):
            await down.check()  # readiness says so too
    await down.close()


@pytest.mark.parametrize("url", ["features/rows", "ftp://features/rows"])
async def test_a_url_that_is_not_http_is_refused_at_start(url: str) -> None:
    r = HttpRetriever(url)
    with pytest.raises(ConfigError, match=f"^http retriever: '{url}': not an http"):
        await r.start()
    await r.close()
