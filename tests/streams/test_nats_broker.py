"""NATS JetStream against the real server: durable pull consumers, acks, redelivery after
the ack wait, de-duplicated publishing, lag, dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js import JetStreamContext
from stream_helpers import nats_cleanup, nats_url, unique_name

from modelport.errors import ConfigError, NotReady
from modelport.streams import broker_class
from modelport.streams.nats import JetStreamBroker, check_max_deliver


@pytest.fixture
def url() -> str:
    return nats_url()


@pytest.fixture
async def js(url: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(url)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
async def subject(url: str) -> AsyncIterator[str]:
    """`<name>.in` in stream `<name>`; its dead letters `<name>.dlq` go to `<name>_dlq`."""
    name = unique_name("mptest")
    async with nats_cleanup(url) as streams:
        streams += [name, f"{name}_dlq", f"{name}_out"]
        yield name


def broker(url: str, name: str, **options: object) -> JetStreamBroker:
    return JetStreamBroker(url, name, f"{name}.in", "scorers", **options)  # type: ignore[arg-type]


async def lag_becomes(b: JetStreamBroker, expected: int) -> bool:
    """JetStream applies acks after the flush that delivered them returns: poll briefly."""
    for _ in range(50):
        if await b.lag() == expected:
            return True
        await asyncio.sleep(0.02)
    return False


async def add(js: JetStreamContext, name: str, payloads: list[bytes]) -> None:
    for p in payloads:
        await js.publish(f"{name}.in", p)


async def test_fetch_ack_and_lag(url: str, subject: str, js: JetStreamContext) -> None:
    b = broker(url, subject)
    assert await b.fetch(10, 0.05) == []  # makes the stream and the consumer
    await add(js, subject, [b"m%d" % i for i in range(10)])
    first = await b.fetch(4, 1)
    assert [m.payload for m in first] == [b"m0", b"m1", b"m2", b"m3"]
    assert [m.id for m in first] == ["1", "2", "3", "4"] and first[0].deliveries == 1
    assert await b.lag() == 10
    await b.ack(first)
    assert await lag_becomes(b, 6)
    await b.ack(await b.fetch(100, 1))
    assert await lag_becomes(b, 0) and await b.fetch(10, 0.05) == []
    await b.close()


async def test_unacked_messages_come_back_after_the_ack_wait(
        url: str, subject: str, js: JetStreamContext) -> None:
    dead = broker(url, subject, ack_wait=1)
    await dead.fetch(1, 0.05)
    await add(js, subject, [b"a", b"b"])
    taken = await dead.fetch(10, 1)
    assert len(taken) == 2
    await dead.close()  # dies without acking
    alive = broker(url, subject, ack_wait=1)
    assert await alive.fetch(10, 0.2) == []  # still within the ack wait
    await asyncio.sleep(1)
    again = await alive.fetch(10, 1)
    assert [(m.payload, m.deliveries) for m in again] == [(b"a", 2), (b"b", 2)]
    assert [m.id for m in again] == [m.id for m in taken]
    await alive.ack(again)
    assert await lag_becomes(alive, 0)
    await alive.close()


async def test_two_workers_of_one_durable_share_the_stream(
        url: str, subject: str, js: JetStreamContext) -> None:
    a, b = broker(url, subject), broker(url, subject)
    await a.fetch(1, 0.05)
    await add(js, subject, [b"%d" % i for i in range(100)])
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    for _ in range(20):
        for name, worker in (("a", a), ("b", b)):
            got = await worker.fetch(7, 0.2)
            seen[name] += [m.payload for m in got]
            await worker.ack(got)
    assert seen["a"] and seen["b"] and not set(seen["a"]) & set(seen["b"])
    assert sorted(seen["a"] + seen["b"]) == sorted(b"%d" % i for i in range(100))
    await a.close()
    await b.close()


async def test_publishing_makes_the_stream_and_stores_a_key_once(
        url: str, subject: str, js: JetStreamContext) -> None:
    b = broker(url, subject)
    await b.publish(f"{subject}.out", [b"x", b"y"], keys=["k1", "k2"])
    await b.publish(f"{subject}.out", [b"x again"], keys=["k1"])  # a crash's second try
    info = await js.stream_info(f"{subject}_out")
    assert info.state.messages == 2
    first = await js.get_msg(f"{subject}_out", 1)
    assert first.data == b"x" and first.headers == {"Nats-Msg-Id": f"{subject}.out:k1"}
    await b.close()


async def test_consumer_settings_follow_the_configuration(
        url: str, subject: str, js: JetStreamContext) -> None:
    first = broker(url, subject, ack_wait=30, max_deliver=6)
    await first.fetch(1, 0.05)
    await first.close()
    b = broker(url, subject, ack_wait=5, max_deliver=4)
    await b.fetch(1, 0.05)
    info = await js.consumer_info(subject, "scorers")
    assert info.config.ack_wait == 5 and info.config.max_deliver == 4
    await b.close()


def test_max_deliver_must_leave_the_worker_a_last_delivery() -> None:
    check_max_deliver(6, 5)
    check_max_deliver(-1, 5)
    with pytest.raises(ConfigError, match=r"max_deliver \(5\) must be more than max_deliveries"):
        check_max_deliver(5, 5)


async def test_an_unreachable_server_is_an_outage() -> None:
    b = JetStreamBroker("nats://127.0.0.1:1", "s", "s.in", "d", connect_timeout=1)
    with pytest.raises(NotReady, match=r"NATS nats://127\.0\.0\.1:1 is unavailable"):
        await b.fetch(1, 0.01)
    await b.close()


async def test_the_broker_is_found_by_name() -> None:
    assert broker_class("nats") is JetStreamBroker
