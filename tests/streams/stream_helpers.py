"""What the stream tests share: a model to score with, and the real brokers, each test
with names of its own (removed afterwards), skipped with the reason where a broker is
absent. Test modules wrap these in fixtures of their own (a `conftest.py` here would
shadow the top-level one, which test modules import as `conftest`)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from conftest import REDIS_URL, require_service
from modelport import Registry, Settings
from modelport.dataplane import DataPlane, ModelConfig
from small_models import cancer

NATS_URL = os.environ.get("MODELPORT_TEST_NATS", "nats://127.0.0.1:4222")


def patients(n: int) -> list[dict[str, float]]:
    """`n` feature records (the data set's rows, over again past its 569)."""
    X, _ = cancer()
    rows = X.to_dict(orient="records")  # type: ignore[attr-defined]
    return [rows[i % len(rows)] for i in range(n)]


@contextlib.asynccontextmanager
async def cancer_dataplane(settings: Settings) -> AsyncIterator[DataPlane]:
    """A data plane serving the model as `cancer` (registered as version 1)."""
    X, clf = cancer()
    reg = Registry(settings=settings)
    reg.register("cancer", clf, sample_input=X[:5])  # type: ignore[index]
    dp = DataPlane(reg, settings, [ModelConfig(ref="cancer:1")])
    await dp.start(follow=False)
    try:
        yield dp
    finally:
        await dp.stop()
        reg.close()


def unique_name(prefix: str) -> str:
    """Tests share the brokers with each other and with CI runs: a name of its own."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _require(name: str, url: str, port: int) -> str:
    parts = urlsplit(url)
    require_service(name, parts.hostname or "127.0.0.1", parts.port or port)
    return url


def redis_url() -> str:
    return _require("Redis", REDIS_URL, 6379)


def nats_url() -> str:
    return _require("NATS", NATS_URL, 4222)


@contextlib.asynccontextmanager
async def redis_cleanup(url: str) -> AsyncIterator[list[str]]:
    """Keys the test adds to the list are deleted afterwards."""
    import redis.asyncio as aioredis

    keys: list[str] = []
    try:
        yield keys
    finally:
        client = aioredis.from_url(url)
        if keys:
            await client.delete(*keys)
        await client.aclose()


@contextlib.asynccontextmanager
async def nats_cleanup(url: str) -> AsyncIterator[list[str]]:
    """JetStream streams the test adds to the list are deleted afterwards."""
    import nats
    import nats.js.errors

    streams: list[str] = []
    try:
        yield streams
    finally:
        nc = await nats.connect(url)
        js = nc.jetstream()
        for stream in streams:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
        await nc.close()
