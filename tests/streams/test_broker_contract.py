"""The broker contract, one suite run against every broker: memory, Redis Streams, NATS
JetStream and Kafka (tansu started by the `kafka` fixture, or MODELPORT_TEST_KAFKA).

What a stream worker relies on: every message delivered, an acknowledged one not again,
an unacknowledged one handed to another member of the group, and the worker's results
and dead letters published where it is told. Broker-specific behaviour (claims, ack
waits, partitions, offsets) has tests of its own beside each broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from stream_helpers import (
    cancer_dataplane,
    nats_cleanup,
    nats_url,
    patients,
    redis_cleanup,
    redis_url,
    unique_name,
)

from modelport import Settings
from modelport.pipeline import MemoryWriter, Pipeline
from modelport.streams.base import Broker, Message
from modelport.streams.worker import StreamWorker

WAIT_S = 60.0  # a new Kafka group member takes seconds to join: the bound, not a sleep


@dataclass
class Target:
    """One broker under test: new members of one group on one input stream."""

    name: str
    member: Callable[[str], Broker]
    """A new member of the group (its consumer name, where the broker has one)."""
    add: Callable[[list[bytes]], Awaitable[None]]
    read: Callable[[str, int], Awaitable[list[tuple[bytes, str | None]]]]
    """At least `n` messages of a subject (or all there are after a while): payload, key."""
    dlq: str
    out: str
    """Where results are published."""


@pytest.fixture(params=["memory", "redis", "nats", "kafka"])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    maker = {"memory": _memory, "redis": _redis, "nats": _nats, "kafka": _kafka}
    async with maker[request.param](request) as t:
        yield t


@contextlib.asynccontextmanager
async def _memory(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    from modelport.streams.memory import MemoryBroker, MemoryBus

    bus = MemoryBus()

    async def add(payloads: list[bytes]) -> None:
        for p in payloads:
            bus.append("in", p)

    async def read(subject: str, n: int) -> list[tuple[bytes, str | None]]:
        return [(p, None) for p in bus.messages(subject)]  # keys are not kept

    yield Target("memory", lambda _: MemoryBroker(bus, "in", ack_wait=0.5), add, read,
                 "in.dlq", "in.out")


@contextlib.asynccontextmanager
async def _redis(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    import redis.asyncio as aioredis

    from modelport.streams.redis import RedisStreamsBroker

    url, name = redis_url(), unique_name("mp-contract-")
    async with redis_cleanup(url) as keys:
        keys += [name, f"{name}.dlq", f"{name}.out"]
        client = aioredis.from_url(url)

        async def add(payloads: list[bytes]) -> None:
            for p in payloads:
                await client.xadd(name, {"payload": p})

        async def read(subject: str, n: int) -> list[tuple[bytes, str | None]]:
            return [(f[b"payload"], f[b"key"].decode() if b"key" in f else None)
                    for _, f in await client.xrange(subject)]

        yield Target("redis", lambda consumer: RedisStreamsBroker(
            url, name, "scorers", consumer, claim_idle_ms=300), add, read, f"{name}.dlq",
            f"{name}.out")
        await client.aclose()


@contextlib.asynccontextmanager
async def _nats(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    import nats

    from modelport.streams.nats import JetStreamBroker

    url, name = nats_url(), unique_name("mpcontract")
    async with nats_cleanup(url) as streams:
        streams += [name, f"{name}_dlq"]
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name=name, subjects=[f"{name}.in"])

        async def add(payloads: list[bytes]) -> None:
            for p in payloads:
                await js.publish(f"{name}.in", p)

        async def read(subject: str, n: int) -> list[tuple[bytes, str | None]]:
            stream = subject.replace(".", "_")
            info = await js.stream_info(stream)
            out: list[tuple[bytes, str | None]] = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                key = (msg.headers or {}).get("Nats-Msg-Id")
                out.append((msg.data, key.removeprefix(f"{subject}:") if key else None))
            return out

        yield Target("nats", lambda _: JetStreamBroker(url, name, f"{name}.in", "scorers",
                                                       ack_wait=1), add, read, f"{name}.dlq",
                     f"{name}.out")
        await nc.close()


@contextlib.asynccontextmanager
async def _kafka(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from modelport.streams.kafka import KafkaBroker

    bootstrap: str = request.getfixturevalue("kafka")
    name = unique_name("mp-contract-")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(name, 3, 1), NewTopic(f"{name}.dlq", 1, 1),
                               NewTopic(f"{name}.out", 1, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()

    async def add(payloads: list[bytes]) -> None:
        for i, p in enumerate(payloads):
            await producer.send(name, p, key=b"%d" % i)
        await producer.flush()

    async def read(subject: str, n: int) -> list[tuple[bytes, str | None]]:
        # from the beginning until n are there: tansu's "latest" offset reads low, so
        # the end offsets cannot say when to stop
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = [TopicPartition(subject, p)
                     for p in sorted(consumer.partitions_for_topic(subject) or {0})]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            out: list[tuple[bytes, str | None]] = []
            deadline = time.monotonic() + 10
            while len(out) < n and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out += [(r.value, r.key.decode() if r.key else None) for r in records]
            return out
        finally:
            await consumer.stop()

    try:
        yield Target("kafka", lambda _: KafkaBroker(bootstrap, name, "scorers",
                                                    session_timeout_ms=6000), add, read,
                     f"{name}.dlq", f"{name}.out")
    finally:
        await producer.stop()
        with contextlib.suppress(Exception):
            await admin.delete_topics([name, f"{name}.dlq", f"{name}.out"])
        await admin.close()


async def fetch_all(broker: Broker, n: int) -> list[Message]:
    """Fetch until `n` messages came (a Kafka member gets partitions only once it joined)."""
    got: list[Message] = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < n:
        assert time.monotonic() < deadline, f"{len(got)} of {n} messages within {WAIT_S}s"
        got += await broker.fetch(n - len(got), 0.2)
    return got


async def test_every_message_is_delivered_and_an_acknowledged_one_not_again(
        target: Target) -> None:
    payloads = [b"m%d" % i for i in range(30)]
    await target.add(payloads)
    broker = target.member("a")
    got = await fetch_all(broker, 30)
    assert sorted(m.payload for m in got) == sorted(payloads)
    assert len({m.id for m in got}) == 30 and all(m.deliveries == 1 for m in got)
    await broker.ack(got)
    await target.add([b"last"])
    # the next delivery is the new message, not an acknowledged one again
    assert [m.payload for m in await fetch_all(broker, 1)] == [b"last"]
    await broker.close()


async def test_unacknowledged_messages_go_to_another_member(target: Target) -> None:
    payloads = [b"m%d" % i for i in range(20)]
    await target.add(payloads)
    dying = target.member("dying")
    taken = await fetch_all(dying, 20)
    await dying.close()  # without acknowledging: a worker that died mid-batch
    heir = target.member("heir")
    again = await fetch_all(heir, 20)
    assert sorted(m.payload for m in again) == sorted(m.payload for m in taken)
    await heir.ack(again)
    await heir.close()


async def test_the_worker_scores_acknowledges_and_dead_letters(
        target: Target, settings: Settings) -> None:
    good = [orjson.dumps({"id": f"p{i}", "data": r}) for i, r in enumerate(patients(40))]
    await target.add([*good[:20], b"{oops", *good[20:]])
    writer = MemoryWriter()
    broker = target.member("w")
    async with cancer_dataplane(settings) as dp:
        worker = StreamWorker(Pipeline("score", "cancer", dp, writer=writer), broker,
                              dead_letter_subject=target.dlq, batch_size=16,
                              fetch_timeout=0.2)
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + WAIT_S
        while len(writer.rows) < 40 or worker.stats.dead_lettered < 1:
            assert not task.done() and time.monotonic() < deadline, worker.stats
            await asyncio.sleep(0.05)
        worker.stop()
        stats = await asyncio.wait_for(task, 30)
    assert set(writer.rows) == {f"p{i}" for i in range(40)}
    assert (stats.processed, stats.dead_lettered) == (40, 1)
    [(payload, key)] = await target.read(target.dlq, 1)
    letter: dict[str, Any] = orjson.loads(payload)
    assert letter["payload"] == "{oops" and "not valid json" in letter["reason"]
    assert key in (None, letter["id"])  # keyed by the dead message's id (memory keeps none)
    await broker.close()
    # all acknowledged: a new member gets nothing
    after = target.member("after")
    assert await after.fetch(10, 1.0) == []
    await after.close()


@pytest.mark.parametrize("target", ["redis", "kafka"], indirect=True)
async def test_avro_through_a_schema_registry_outage_and_poison_included(
        target: Target, settings: Settings) -> None:
    """Avro records in Confluent's wire format, their schemas in a registry (the small
    one the test serves): scored, results published as Avro, poison dead-lettered
    with its reason; while the registry is down nothing is dead-lettered or written."""
    from schema_registry import SchemaRegistryServer, framed, unframed
    from stream_helpers import cancer

    from modelport.monitoring.metrics import Metrics
    from modelport.streams.avro import AvroFormat, SchemaRegistry
    from modelport.streams.writer import StreamWriter

    X, clf = cancer()
    records = patients(20)
    data = {"type": "record", "name": "Patient",
            "fields": [{"name": n, "type": "double"} for n in records[0]]}
    envelope = {"type": "record", "name": "Envelope", "fields": [
        {"name": "id", "type": "string"}, {"name": "data", "type": data}]}
    registry = SchemaRegistryServer().up()
    bare, wrapped = registry.add(data), registry.add(envelope, "envelopes-value")
    good = [framed(bare, data, r) for r in records[:10]] + \
        [framed(wrapped, envelope, {"id": f"p{i}", "data": r})
         for i, r in enumerate(records[10:], 10)]
    poison = {"unknown schema id 77": framed(77, data, records[0]),
              "Avro body is truncated": good[0][:-8],
              "column 'mean radius': expected FP64, got string": framed(
                  registry.add(text := {**data, "name": "Text", "fields": [
                      {"name": n, "type": "string"} for n in records[0]]}),
                  text, {n: "big" for n in records[0]})}
    await target.add([*good[:5], *poison.values(), *good[5:]])
    registry.down()  # before the worker asks: an outage, not unknown ids
    broker, metrics = target.member("w"), Metrics()
    writer = StreamWriter(target.out, codec="avro", avro={"registry_url": registry.url})
    writer.lend(broker)
    async with cancer_dataplane(settings) as dp:
        worker = StreamWorker(Pipeline("score", "cancer", dp, writer=writer), broker,
                              dead_letter_subject=target.dlq, batch_size=8,
                              fetch_timeout=0.2, max_backoff=0.5, metrics=metrics,
                              codec=AvroFormat(registry=SchemaRegistry(registry.url)))
        task = asyncio.create_task(worker.run())
        retries = metrics.stream_retries.labels("score", "schema registry")
        deadline = time.monotonic() + WAIT_S
        while retries._value.get() < 3:
            assert not task.done() and time.monotonic() < deadline, worker.stats
            await asyncio.sleep(0.05)
        assert (worker.stats.processed, worker.stats.dead_lettered) == (0, 0)
        registry.up()  # the same port and schemas: the held batch goes on
        while worker.stats.processed < 20 or worker.stats.dead_lettered < 3:
            assert not task.done() and time.monotonic() < deadline, worker.stats
            await asyncio.sleep(0.05)
        worker.stop()
        stats = await asyncio.wait_for(task, 30)
    registry.down()
    # at least once: a batch held past Redis's claim_idle_ms is claimed and processed
    # again by the next fetch, so counts may be higher; what was written is exact
    assert stats.processed >= 20 and stats.dead_lettered >= 3
    results = [unframed(p, registry.schemas)[1] for p, _ in await target.read(target.out, 20)]
    by_id = {r["id"]: r for r in results}
    assert len(by_id) == 20
    predicted = clf.predict(X[10:20])  # type: ignore[index]
    assert [by_id[f"p{i}"]["predictions"] for i in range(10, 20)] == predicted.tolist()
    letters = [orjson.loads(p) for p, _ in await target.read(target.dlq, 3)]
    assert all(any(w in d["reason"] for w in poison) for d in letters), letters
    for words in poison:
        assert any(words in d["reason"] for d in letters), (words, letters)
    await broker.close()
    # all acknowledged: a new member gets nothing
    after = target.member("after")
    assert await after.fetch(10, 1.0) == []
    await after.close()
