"""Kafka: offsets committed only past an unbroken run of settled messages (a fake
consumer, always), and the real thing where MODELPORT_TEST_KAFKA names a broker."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord
from stream_helpers import cancer_dataplane, patients

from modelport import Settings
from modelport.dataplane import DataPlane
from modelport.errors import ConfigError
from modelport.pipeline import MemoryWriter, Pipeline
from modelport.streams import broker_class
from modelport.streams.kafka import KafkaBroker
from modelport.streams.worker import StreamWorker

KAFKA = os.environ.get("MODELPORT_TEST_KAFKA")
TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeConsumer:
    """What KafkaBroker asks of aiokafka's consumer, recording commits."""

    def __init__(self, batches: list[dict[TopicPartition, list[int]]]) -> None:
        self.batches = batches
        self.commits: list[dict[TopicPartition, int]] = []
        self.refuse = False

    async def getmany(self, timeout_ms: int, max_records: int
                      ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        batch = self.batches.pop(0) if self.batches else {}
        return {tp: [record(tp, o) for o in offsets] for tp, offsets in batch.items()}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.refuse:
            raise CommitFailedError("the group has rebalanced")
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


async def test_a_commit_refused_by_a_rebalance_is_not_an_error() -> None:
    broker, consumer = fake([{TP0: [0, 1]}])
    messages = await broker.fetch(10, 0)
    consumer.refuse = True
    await broker.ack(messages)  # logged: the partition's new owner processes them again
    assert consumer.commits == []


async def test_revoked_partitions_are_forgotten() -> None:
    broker, consumer = fake([{TP0: [0], TP1: [0]}])
    m0, m1 = await broker.fetch(10, 0)
    broker.forget([TP0])
    await broker.ack([m0, m1])
    assert consumer.commits == [{TP1: 1}]


def test_the_broker_is_found_by_name() -> None:
    assert broker_class("kafka") is KafkaBroker


# --- against a real Kafka ------------------------------------------------------------

needs_kafka = pytest.mark.skipif(
    KAFKA is None, reason="no Kafka broker here: set MODELPORT_TEST_KAFKA=host:9092 to run")


@pytest.fixture
async def topic() -> AsyncIterator[str]:
    assert KAFKA is not None
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    name = f"mp-test-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    await admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1),
                               NewTopic(f"{name}.dlq", 1, 1)])
    yield name
    await admin.delete_topics([name, f"{name}.dlq"])
    await admin.close()


@pytest.fixture
async def dataplane(settings: Settings) -> AsyncIterator[DataPlane]:
    async with cancer_dataplane(settings) as dp:
        yield dp


@needs_kafka
async def test_the_worker_scores_commits_and_dead_letters_through_kafka(
        topic: str, dataplane: DataPlane) -> None:
    assert KAFKA is not None
    producer = KafkaBroker(KAFKA, topic, "unused")
    good = [orjson.dumps({"id": f"p{i}", "data": r}) for i, r in enumerate(patients(40))]
    await producer.publish(topic, [*good[:20], b"{oops", *good[20:]])
    await producer.close()
    writer = MemoryWriter()
    broker = KafkaBroker(KAFKA, topic, "scorers")
    worker = StreamWorker(Pipeline("score", "cancer", dataplane, writer=writer), broker,
                          dead_letter_subject=f"{topic}.dlq", batch_size=16, fetch_timeout=1)
    # not burst: joining a new group takes seconds, and early fetches come back empty
    task = asyncio.create_task(worker.run())
    for _ in range(600):
        if len(writer.rows) == 40 and worker.stats.dead_lettered == 1:
            break
        await asyncio.sleep(0.1)
    worker.stop()
    stats = await asyncio.wait_for(task, 10)
    assert set(writer.rows) == {f"p{i}" for i in range(40)} and stats.dead_lettered == 1
    assert await broker.lag() == 0  # every offset committed
    await broker.close()


def test_client_options_go_to_the_client_that_takes_them() -> None:
    broker = KafkaBroker("k:9092", "t", "g", fetch_max_wait_ms=100, linger_ms=5,
                         security_protocol="SSL")
    assert broker._consumer_options == {"fetch_max_wait_ms": 100, "security_protocol": "SSL"}
    assert broker._producer_options == {"linger_ms": 5, "security_protocol": "SSL"}
    with pytest.raises(ConfigError, match=r"unknown option.*lingr_ms"):
        KafkaBroker("k:9092", "t", "g", lingr_ms=5)
