"""Redis components against the real Redis (database 15, a prefix per test)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import numpy as np
import pytest
from redis.asyncio import Redis

from conftest import REDIS_URL, require_service
from modelport.errors import ConfigError, ModelportError, NotReady
from modelport.pipeline import Frame
from modelport.pipeline.redis import RedisRetriever, RedisWriter

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    parts = urlsplit(REDIS_URL)
    require_service("Redis", parts.hostname or "127.0.0.1", parts.port or 6379)
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    name = f"mp-test:{uuid.uuid4().hex[:10]}:"
    yield name
    keys = [k async for k in redis.scan_iter(match=f"{name}*")]
    if keys:
        await redis.delete(*keys)


def scores(keys: list[int]) -> Frame:
    p = np.linspace(0.1, 0.9, len(keys))
    return Frame(keys, {
        "probabilities": np.stack([1 - p, p], axis=1),
        "predictions": (p > 0.5).astype(np.int64),
        "score": p,
        "flagged": p > 0.8,
        "label": [f"u{k}" for k in keys],
    })


@pytest.mark.parametrize("fmt", ["hash", "json"])
async def test_written_rows_read_back_typed(redis, prefix, fmt) -> None:
    writer = RedisWriter(REDIS_URL, prefix=prefix, format=fmt)
    retriever = RedisRetriever(REDIS_URL, prefix=prefix, format=fmt)
    await writer.start()
    await retriever.start()
    frame = scores([1, 2, 3])
    frame.columns["score"][1] = np.nan  # missing: a hash leaves the field out
    await writer.write(frame)
    got = await retriever.get([3, 1, 2, 99, "1"])
    await writer.close()
    await retriever.close()
    assert got.keys == [3, 1, 2, "1"]  # the caller's keys; 99 has no data
    assert got.columns["predictions"].tolist() == [1, 0, 0, 0]
    assert got.columns["predictions"].dtype.kind == "i"
    np.testing.assert_allclose(got.columns["probabilities"][0], [0.1, 0.9])
    assert got.columns["probabilities"].shape == (4, 2)
    assert np.isnan(got.columns["score"][2]) and got.columns["score"][0] == pytest.approx(0.9)
    assert got.columns["label"].tolist() == ["u3", "u1", "u2", "u1"]
    assert got.columns["flagged"].tolist()[0] in (1, True)  # a hash stores booleans as 1/0
    if fmt == "hash":
        assert await redis.hgetall(f"{prefix}3") == {
            "probabilities": "[0.09999999999999998,0.9]", "predictions": "1",
            "score": "0.9", "flagged": "1", "label": "u3"}


async def test_a_write_replaces_the_row_and_sets_its_ttl(redis, prefix) -> None:
    writer = RedisWriter(REDIS_URL, prefix=prefix, ttl=60)
    await writer.write(Frame([7], {"a": [1], "b": ["x"]}))
    await writer.write(Frame([7], {"a": [2]}))
    await writer.close()
    assert await redis.hgetall(f"{prefix}7") == {"a": "2"}  # no stale field b
    assert 55 < await redis.ttl(f"{prefix}7") <= 60
    json_writer = RedisWriter(REDIS_URL, prefix=prefix + "j:", format="json", ttl=0.5)
    await json_writer.write(Frame(["k"], {"a": [1.5]}))
    await json_writer.close()
    assert await redis.get(f"{prefix}j:k") == '{"a":1.5}'
    assert 0 < await redis.pttl(f"{prefix}j:k") <= 500


async def test_many_keys_one_round_trip_and_hash_values_parsed(redis, prefix) -> None:
    await redis.hset(f"{prefix}a", mapping={
        "n": "12", "neg": "-3", "f": "2.5e3", "text": "12abc", "empty": "", "arr": "[1, 2]",
        "bad_json": "[oops"})
    await redis.set(f"{prefix}s", "a string, not a hash")
    retriever = RedisRetriever(REDIS_URL, prefix=prefix)
    got = await retriever.get(["a", *range(10_000)])  # two chunks of pipelined HGETALLs
    assert got.keys == ["a"]
    assert got.records() == [{"n": 12, "neg": -3, "f": 2500.0, "text": "12abc", "empty": "",
                              "arr": [1, 2], "bad_json": "[oops"}]
    with pytest.raises(ModelportError, match="WRONGTYPE"):
        await retriever.get(["s"])
    await retriever.close()


async def test_unreachable_redis_is_a_fast_503_naming_it_without_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://:hunter2@127.0.0.1:{port}/15"
    retriever = RedisRetriever(url)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NotReady) as info:
        await retriever.get([1])
    assert loop.time() - started < 2
    assert info.value.message.startswith(f"Redis redis://:***@127.0.0.1:{port}/15 is unavailable")
    assert "hunter2" not in info.value.message
    with pytest.raises(NotReady):
        await RedisWriter(url).write(Frame([1], {"a": [1]}))
    await retriever.close()


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="format must be"):
        RedisRetriever(REDIS_URL, format="xml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ttl must be positive"):
        RedisWriter(REDIS_URL, ttl=0)
    with pytest.raises(ConfigError, match="not a Redis URL"):
        RedisRetriever("http://example.com").client  # noqa: B018
