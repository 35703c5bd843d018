"""A backing service goes away under a running server, then comes back.

The shared Redis and PostgreSQL stay up (other tests use them): the components reach
them through a TCP proxy this test runs, stops and restarts on the same port.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from conftest import PG_HOST, PG_PORT, REDIS_URL, require_service
from modelport import Registry, Settings
from modelport.config import load_config
from modelport.server import create_app
from modelport.service import Service
from small_models import cancer


class TcpProxy:
    """Forwards a loopback port to `upstream`; `stop()` refuses new connections and cuts
    the open ones (as a crashed server or a network partition would), `start()` listens
    again on the same port. Runs its own event loop in a thread."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        self._call(self._start())

    def stop(self) -> None:
        self._call(self._stop())

    def shutdown(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._open.discard(writer)
            writer.transport.abort()


@pytest.fixture
def proxy_to() -> Iterator[Any]:
    proxies: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port)
        proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.shutdown()


@pytest.fixture
def reg(settings: Settings) -> Registry:
    X, clf = cancer()
    r = Registry(settings=settings)
    r.register("cancer", clf, sample_input=X[:5])
    r.set_alias("cancer", "production", 1)
    return r


def serve(settings: Settings, reg: Registry, tmp_path: Path, retriever: str) -> TestClient:
    path = tmp_path / "modelport.yaml"
    path.write_text(f"pipelines:\n  - name: score\n    model: cancer@production\n"
                    f"    retriever: {retriever}\n")
    service = Service(settings, load_config(path, {}), reg)
    return TestClient(create_app(service))


def run(client: TestClient, key: int) -> Any:
    return client.post("/pipelines/score/run", json={"key": key})


def test_redis_outage_answers_503s_and_recovers_without_restart(
        settings: Settings, reg: Registry, tmp_path: Path, proxy_to: Any) -> None:
    parts = urlsplit(REDIS_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    require_service("Redis", host, port)
    X, _ = cancer()
    prefix = f"mp-test:{uuid.uuid4().hex[:10]}:"
    direct = redis.Redis.from_url(REDIS_URL)
    for i, row in enumerate(X[:3].to_dict(orient="records")):
        direct.hset(f"{prefix}{i}", mapping={k: float(v) for k, v in row.items()})
    proxy = proxy_to(host, port)
    url = f"redis://{host}:{proxy.port}{parts.path}"
    try:
        with serve(settings, reg, tmp_path,
                   f"{{type: redis, url: '{url}', prefix: '{prefix}'}}") as client:
            assert run(client, 0).status_code == 200

            proxy.stop()
            for _ in range(3):  # every request during the outage: a clear 503, fast
                down = run(client, 1)
                assert down.status_code == 503
                assert down.json()["error"].startswith(f"Redis {url} is unavailable")
                assert client.get("/v2/health/live").status_code == 200  # still answering
            not_ready = client.get("/v2/health/ready")
            assert not_ready.status_code == 400
            assert not_ready.json()["pipelines"]["score"]["error"].startswith(f"Redis {url}")

            proxy.start()
            assert client.get("/v2/health/ready").status_code == 200
            back = run(client, 1)
            assert back.status_code == 200, back.text
            assert back.json()["result"]["predictions"] in (0, 1)
    finally:
        direct.delete(*[f"{prefix}{i}" for i in range(3)])
        direct.close()


def test_postgres_outage_answers_503s_and_the_pool_reconnects(
        settings: Settings, reg: Registry, tmp_path: Path, proxy_to: Any,
        pg_server_url: str) -> None:
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    X, _ = cancer()
    table = f"mp_{uuid.uuid4().hex[:10]}"
    engine = create_engine(pg_server_url)
    X[:3].rename_axis("id").reset_index().to_sql(table, engine, index=False)
    proxy = proxy_to(PG_HOST, PG_PORT)
    url = pg_server_url.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{proxy.port}")
    try:
        with serve(settings, reg, tmp_path,
                   f"{{type: sql, url: '{url}', table: {table}}}") as client:
            assert run(client, 0).status_code == 200

            proxy.stop()  # the pooled connection is cut; new ones are refused
            down = run(client, 1)
            assert down.status_code == 503
            assert down.json()["error"].startswith(f"SQL database {url} is unavailable")
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/v2/health/ready").json()["pipelines"]["score"]["ready"] is False

            proxy.start()
            back = run(client, 2)
            assert client.get("/v2/health/ready").status_code == 200
            assert back.status_code == 200, back.text
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP TABLE IF EXISTS "{table}"'))
        engine.dispose()
