"""Kafka: offsets committed only past an unbroken run of settled messages (a fake
consumer, always), and the real thing where MODELPORT_TEST_KAFKA names a broker."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError
from aiokafka.structs import ConsumerRecord

from modelport.errors import ConfigError, ModelportError
from modelport.streams import broker_class
from modelport.streams.kafka import KafkaBroker

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeConsumer:
    """What KafkaBroker asks of aiokafka's consumer, recording commits."""

    def __init__(self, batches: list[dict[TopicPartition, list[int]]]) -> None:
        self.batches = batches
        self.commits: list[dict[TopicPartition, int]] = []
        self.refuse = False
        self.fail: Exception | None = None  # the next commit raises it
        self.gate: asyncio.Event | None = None  # commits wait for it, once entered
        self.entered = asyncio.Event()

    async def getmany(self, timeout_ms: int, max_records: int
                      ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        batch = self.batches.pop(0) if self.batches else {}
        return {tp: [record(tp, o) for o in offsets] for tp, offsets in batch.items()}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.refuse:
            raise CommitFailedError("the group has rebalanced")
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.commits.append(dict(offsets))


def record(tp: TopicPartition, offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, None, b"m%d" % offset, None,
                          0, 0, [("trace", b"abc")])


def fake(batches: list[dict[TopicPartition, list[int]]]) -> tuple[KafkaBroker, FakeConsumer]:
    broker = KafkaBroker("unused:9092", "t", "g")
    consumer = FakeConsumer(batches)
    broker._consumer = consumer  # type: ignore[assignment]
    return broker, consumer


async def test_commits_stop_before_the_first_message_still_in_flight() -> None:
    broker, consumer = fake([{TP0: [10, 11, 12, 13], TP1: [5]}])
    messages = await broker.fetch(10, 0)
    assert [m.id for m in messages] == ["t:0:10", "t:0:11", "t:0:12", "t:0:13", "t:1:5"]
    assert messages[0].headers == {"trace": "abc"} and messages[0].deliveries == 1
    m10, m11, m12, m13, m5 = messages
    await broker.ack([m12, m13, m5])  # 10 and 11 are not settled yet
    assert consumer.commits == [{TP1: 6}]
    await broker.ack([m10])
    assert consumer.commits[-1] == {TP0: 11}
    await broker.ack([m11])
    assert consumer.commits[-1] == {TP0: 14}  # the offset after the highest processed


async def test_offsets_fetched_again_count_their_deliveries() -> None:
    # the consumer read part of a partition again (a seek back): second and third
    # deliveries; the committed offset passes what each first delivery settled
    broker, consumer = fake([{TP0: [0, 1, 2]}, {TP0: [1, 2]}, {TP0: [2, 3]}])
    first, second, third = [await broker.fetch(10, 0) for _ in range(3)]
    assert [m.deliveries for m in first + second + third] == [1, 1, 1, 2, 2, 3, 1]
    await broker.ack(second)  # 0 is not settled yet
    assert consumer.commits == []
    await broker.ack(first)
    assert consumer.commits == [{TP0: 3}]
    await broker.ack(first[1:])  # settled already: the commit does not move
    await broker.ack(third)
    assert consumer.commits == [{TP0: 3}, {TP0: 4}]


async def test_a_commit_refused_by_a_rebalance_is_not_an_error() -> None:
    broker, consumer = fake([{TP0: [0, 1]}])
    messages = await broker.fetch(10, 0)
    consumer.refuse = True
    await broker.ack(messages)  # logged: the partition's new owner processes them again
    assert consumer.commits == []


async def test_acks_during_a_commit_share_the_next_one() -> None:
    broker, consumer = fake([{TP0: [0, 1, 2], TP1: [7]}])
    m0, m1, m2, m7 = await broker.fetch(10, 0)
    consumer.gate = asyncio.Event()
    first = asyncio.create_task(broker.ack([m0]))
    await consumer.entered.wait()  # its commit is in flight
    later = [asyncio.create_task(broker.ack(ms)) for ms in ([m1], [m2], [m7])]
    while broker._settled != {TP0: 3, TP1: 8}:  # all three have settled theirs
        await asyncio.sleep(0)
    consumer.gate.set()
    await asyncio.gather(first, *later)
    assert consumer.commits == [{TP0: 1}, {TP0: 3, TP1: 8}]  # two commits for four acks


async def test_a_commit_that_failed_is_made_by_the_retried_ack() -> None:
    broker, consumer = fake([{TP0: [0, 1]}])
    messages = await broker.fetch(10, 0)
    consumer.fail = KafkaConnectionError("coordinator gone")
    with pytest.raises(ModelportError):
        await broker.ack(messages)  # an outage: the worker retries the ack
    await broker.ack(messages)
    assert consumer.commits == [{TP0: 2}]


async def test_revoked_partitions_are_forgotten() -> None:
    broker, consumer = fake([{TP0: [0], TP1: [0]}])
    m0, m1 = await broker.fetch(10, 0)
    broker.forget([TP0])
    await broker.ack([m0, m1])
    assert consumer.commits == [{TP1: 1}]


def test_the_broker_is_found_by_name() -> None:
    assert broker_class("kafka") is KafkaBroker


# --- against a real broker: tansu, or MODELPORT_TEST_KAFKA --------------------------
# (the contract every broker keeps, the worker's included, is test_broker_contract.py)


@pytest.fixture
async def topic(kafka: str) -> AsyncIterator[str]:
    """A 3-partition topic of its own, and `<topic>.dlq`; deleted afterwards."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    name = f"mp-test-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    await admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1),
                               NewTopic(f"{name}.dlq", 1, 1)])
    yield name
    await admin.delete_topics([name, f"{name}.dlq"])
    await admin.close()


async def members(kafka: str, group: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        [described] = await admin.describe_consumer_groups([group])
        return len(described.groups[0][5])  # (error, group, state, type, protocol, members)
    finally:
        await admin.close()


async def test_asking_for_lag_while_the_consumer_joins_leaks_no_group_member(
        kafka: str, topic: str) -> None:
    # a group of its own: the crash test's killed workers stay members of theirs for a
    # session timeout, and a join or leave there waits for them
    group = f"{topic}-scorers"
    broker = KafkaBroker(kafka, topic, group)
    assert await broker.lag() is None and broker._consumer is None  # asking starts nothing
    # the status loop asks for lag while the consumer starts: still one consumer
    await asyncio.gather(broker.start(), broker.lag(), broker.lag())
    consumer = broker._consumer
    assert consumer is not None
    for _ in range(600):  # joining takes a few seconds; bounded, not timed
        if len(consumer.assignment()) == 3:
            break
        await asyncio.sleep(0.05)
    assert len(consumer.assignment()) == 3  # every partition is this member's
    assert await members(kafka, group) == 1
    await broker.close()


async def test_producer_options_are_settable(kafka: str, topic: str) -> None:
    broker = KafkaBroker(kafka, topic, "g", acks=1, enable_idempotence=False, linger_ms=1)
    assert broker._producer_options == {"acks": 1, "enable_idempotence": False,
                                        "linger_ms": 1}
    await broker.publish(f"{topic}.dlq", [b"x"], keys=["k"])  # not a TypeError
    await broker.close()
    assert KafkaBroker(kafka, topic, "g")._producer_options == {
        "acks": "all", "enable_idempotence": False}


async def test_batches_publishing_at_once_share_one_producer(kafka: str, topic: str) -> None:
    # two batches of a worker dead-letter side by side: each once started a producer, and
    # the one overwritten leaked (unclosed, its sender task destroyed pending)
    broker = KafkaBroker(kafka, topic, "g")
    started: list[Any] = []
    start = AIOKafkaProducer.start

    async def counted(self: AIOKafkaProducer) -> None:
        started.append(self)
        await start(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AIOKafkaProducer, "start", counted)
        await asyncio.gather(*(broker.publish(f"{topic}.dlq", [b"x%d" % i], keys=["k"])
                               for i in range(3)))
    assert len(started) == 1 and broker._producer is started[0]
    await broker.close()


@pytest.mark.skipif(os.environ.get("MODELPORT_TEST_KAFKA") is not None,
                    reason="Apache Kafka has idempotent producers; tansu lacks them")
async def test_a_failed_publish_names_the_topic_written_to(kafka: str, topic: str) -> None:
    # tansu answers InitProducerId with an error: a publish that cannot be made
    broker = KafkaBroker(kafka, topic, "g", enable_idempotence=True)
    with pytest.raises(ModelportError, match=rf"topic '{topic}\.dlq'"):
        await broker.publish(f"{topic}.dlq", [b"x"], keys=["k"])
    await broker.close()


def test_client_options_go_to_the_client_that_takes_them() -> None:
    broker = KafkaBroker("k:9092", "t", "g", fetch_max_wait_ms=100, linger_ms=5,
                         security_protocol="SSL")
    assert broker._consumer_options == {"fetch_max_wait_ms": 100, "security_protocol": "SSL"}
    assert broker._producer_options == {"acks": "all", "enable_idempotence": False,
                                        "linger_ms": 5, "security_protocol": "SSL"}
    with pytest.raises(ConfigError, match=r"unknown option.*lingr_ms"):
        KafkaBroker("k:9092", "t", "g", lingr_ms=5)
