"""Redis Streams against the real Redis: consumer groups, acks, claims, lag, dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis
from stream_helpers import redis_cleanup, redis_url, unique_name

from modelport.errors import NotReady
from modelport.streams import broker_class
from modelport.streams.redis import RedisStreamsBroker


@pytest.fixture
def url() -> str:
    return redis_url()


@pytest.fixture
async def stream(url: str) -> AsyncIterator[str]:
    """A stream of its own; it, its dead letters and outputs are deleted afterwards."""
    name = unique_name("mp-test-")
    async with redis_cleanup(url) as keys:
        keys += [name, f"{name}.dlq", f"{name}.out"]
        yield name


@pytest.fixture
async def client(url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.from_url(url)
    yield c
    await c.aclose()


async def add(client: aioredis.Redis, stream: str, payloads: list[bytes]) -> list[str]:
    return [(await client.xadd(stream, {"payload": p})).decode() for p in payloads]


def broker(url: str, stream: str, consumer: str, **options: object) -> RedisStreamsBroker:
    return RedisStreamsBroker(url, stream, "scorers", consumer, **options)  # type: ignore[arg-type]


async def test_fetch_ack_and_lag(url: str, stream: str, client: aioredis.Redis) -> None:
    ids = await add(client, stream, [b"m%d" % i for i in range(10)])
    b = broker(url, stream, "a")
    first = await b.fetch(4, 0.1)
    assert [m.id for m in first] == ids[:4] and first[0].payload == b"m0"
    assert all(m.deliveries == 1 for m in first)
    assert await b.lag() == 10  # 6 never delivered + 4 delivered, not acknowledged
    await b.ack(first)
    assert await b.lag() == 6
    rest = await b.fetch(100, 0.1)
    await b.ack(rest)
    assert await b.lag() == 0 and await b.fetch(10, 0.05) == []
    await b.close()


async def test_a_dead_consumers_entries_are_claimed_with_their_delivery_count(
        url: str, stream: str, client: aioredis.Redis) -> None:
    await add(client, stream, [b"m%d" % i for i in range(5)])
    dead = broker(url, stream, "dead", claim_idle_ms=100)
    taken = await dead.fetch(3, 0.1)  # and then it dies without acking
    alive = broker(url, stream, "alive", claim_idle_ms=100)
    fresh = await alive.fetch(10, 0.1)
    assert [m.payload for m in fresh] == [b"m3", b"m4"]
    await alive.ack(fresh)
    await asyncio.sleep(0.15)
    claimed = await alive.fetch(10, 0.1)
    assert [m.id for m in claimed] == [m.id for m in taken]
    assert [m.deliveries for m in claimed] == [2, 2, 2]
    await alive.ack(claimed)
    assert await alive.lag() == 0
    pending = await client.xpending(stream, "scorers")
    assert pending["pending"] == 0
    await dead.close()
    await alive.close()


async def test_a_restart_under_the_same_name_reads_its_own_entries_back_at_once(
        url: str, stream: str, client: aioredis.Redis) -> None:
    await add(client, stream, [b"a", b"b", b"c"])
    before = broker(url, stream, "pod-0")
    assert len(await before.fetch(2, 0.1)) == 2
    await before.close()
    after = broker(url, stream, "pod-0")  # claim_idle_ms is 30 s: no waiting for that
    again = await after.fetch(10, 0.1)
    assert [(m.payload, m.deliveries) for m in again] == [(b"a", 2), (b"b", 2)]
    await after.ack(again)
    assert [m.payload for m in await after.fetch(10, 0.1)] == [b"c"]
    await after.close()


async def test_two_consumers_in_one_group_share_the_stream(
        url: str, stream: str, client: aioredis.Redis) -> None:
    await add(client, stream, [b"%d" % i for i in range(200)])
    a, b = broker(url, stream, "a"), broker(url, stream, "b")
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    for _ in range(20):
        for name, consumer in (("a", a), ("b", b)):
            got = await consumer.fetch(7, 0.01)
            seen[name] += [m.payload for m in got]
            await consumer.ack(got)
    assert seen["a"] and seen["b"] and not set(seen["a"]) & set(seen["b"])
    assert sorted(seen["a"] + seen["b"]) == sorted(b"%d" % i for i in range(200))
    await a.close()
    await b.close()


async def test_a_deleted_stream_and_group_are_made_again(
        url: str, stream: str, client: aioredis.Redis) -> None:
    b = broker(url, stream, "a")
    assert await b.fetch(10, 0.01) == []  # makes the group (and the stream)
    await client.delete(stream)
    await add(client, stream, [b"after"])
    assert [m.payload for m in await b.fetch(10, 0.1)] == [b"after"]
    await b.close()


async def test_entries_without_the_payload_field_are_handed_on_as_json(
        url: str, stream: str, client: aioredis.Redis) -> None:
    await client.xadd(stream, {"user": "7", "track": "42"})
    b = broker(url, stream, "a")
    [m] = await b.fetch(1, 0.1)
    assert orjson.loads(m.payload) == {"user": "7", "track": "42"}
    await b.close()


async def test_publish_with_keys_and_maxlen(url: str, stream: str,
                                            client: aioredis.Redis) -> None:
    b = broker(url, stream, "a", maxlen=1000)
    await b.publish(f"{stream}.out", [b"x", b"y"], keys=["k1", "k2"])
    entries = await client.xrange(f"{stream}.out")
    assert [f for _, f in entries] == [{b"payload": b"x", b"key": b"k1"},
                                       {b"payload": b"y", b"key": b"k2"}]
    await b.close()


async def test_consumers_left_by_restarts_are_pruned_when_idle_and_empty(
        url: str, stream: str, client: aioredis.Redis) -> None:
    await add(client, stream, [b"1", b"2"])
    done = broker(url, stream, "done")
    await done.ack(await done.fetch(1, 0.1))
    busy = broker(url, stream, "busy")
    assert await busy.fetch(1, 0.1)  # pending: must survive
    await asyncio.sleep(0.05)
    pruner = broker(url, stream, "pruner", prune_idle_ms=10)
    await pruner.fetch(1, 0.01)
    names = {c["name"].decode() for c in await client.xinfo_consumers(stream, "scorers")}
    assert names == {"busy", "pruner"}
    for b in (done, busy, pruner):
        await b.close()


async def test_an_unreachable_redis_is_an_outage() -> None:
    b = RedisStreamsBroker("redis://:secret@127.0.0.1:1/0", "s", "g")
    with pytest.raises(NotReady, match=r"Redis redis://:\*\*\*@127.0.0.1:1/0 is unavailable"):
        await b.fetch(1, 0.01)
    await b.close()


async def test_the_broker_is_found_by_name() -> None:
    assert broker_class("redis") is RedisStreamsBroker


async def test_pending_entries_trimmed_from_the_stream_leave_the_pel(
        url: str, stream: str, client: aioredis.Redis) -> None:
    ids = await add(client, stream, [b"a", b"b", b"c"])
    before = broker(url, stream, "pod-0")
    assert len(await before.fetch(3, 0.1)) == 3
    await before.close()
    await client.xdel(stream, ids[1])  # trimmed while pending
    after = broker(url, stream, "pod-0")
    again = await after.fetch(10, 0.1)
    assert [m.payload for m in again] == [b"a", b"c"]
    assert (await client.xpending(stream, "scorers"))["pending"] == 2  # b is gone
    await after.ack(again)
    await after.close()
