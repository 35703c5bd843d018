"""Kafka (aiokafka): a consumer group with auto-commit off, offsets committed after the
write.

Kafka keeps one number per partition for a group, the committed offset: everything
below it counts as processed. So an ack commits, per partition, the offset after the
highest message of an unbroken run of settled ones, never past a message still in
flight; acks that come while a commit is in flight share the next one. The
consequences, stated plainly:

- A crash between the write and the commit delivers the batch again, to whichever
  member gets the partition: written twice, absorbed by the idempotent (upserting)
  writer. The same happens to the batch in flight when a rebalance takes its
  partition away: its commit is refused, and the new owner processes it again.
- Kafka does not count deliveries. `Message.deliveries` counts this process's
  attempts, which start at 1 after every restart or rebalance, so a message that
  crashes the worker every time is never dead-lettered on its count: it stops its
  partition until the cause is fixed. Messages the worker can judge (undecodable,
  invalid, refused by the sink) are dead-lettered at once, as on every broker.
- Ordering holds within a partition, as Kafka gives it.
- A batch held longer than `max_poll_interval_ms` (a long sink outage) makes Kafka
  drop this member from the group and rebalance; its batch is then redelivered.
- Outputs and dead letters are published with `acks="all"` (stored by every in-sync
  replica before the input is committed) and without the idempotent producer: a
  letter is published before its input is committed, so a crash between the two
  publishes it again anyway (at least once, keyed by the input's id), and brokers
  that lack `InitProducerId` (tansu) can take it. Both are producer options to set.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError

from modelport.connections import unavailable
from modelport.errors import ConfigError, ModelportError
from modelport.streams.base import Broker, Message

log = logging.getLogger("modelport.stream.kafka")

PRODUCER_DEFAULTS: dict[str, Any] = {"acks": "all", "enable_idempotence": False}
"""What the producer of outputs and dead letters gets unless the options say otherwise."""


class KafkaBroker(Broker):
    """A member of consumer group `group_id` on `topic`; `client_options` go to both
    aiokafka clients (security_protocol, sasl_mechanism, ssl_context, …)."""

    name = "kafka"

    def __init__(self, bootstrap_servers: str | list[str], topic: str, group_id: str, *,
                 auto_offset_reset: str = "earliest", max_poll_interval_ms: int = 300_000,
                 session_timeout_ms: int = 10_000, **client_options: Any) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.group_id = group_id
        self.auto_offset_reset = auto_offset_reset
        self.max_poll_interval_ms = max_poll_interval_ms
        self.session_timeout_ms = session_timeout_ms
        # each client gets the options it takes (fetch_* are the consumer's, linger_ms
        # the producer's); one neither takes is a typo, named now rather than at start
        self._consumer_options, producer_options = _split_options(client_options)
        self._producer_options = {**PRODUCER_DEFAULTS, **producer_options}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        # per partition, the offsets fetched and not yet settled (acked or
        # dead-lettered) as an unbroken run, in order (an offset fetched again is there
        # again); those of them settled already, past a gap; the highest offset fetched,
        # and how often an offset at or below it was fetched again (only those: a first
        # delivery keeps no entry)
        self._inflight: dict[TopicPartition, deque[int]] = {}
        self._done: dict[TopicPartition, set[int]] = {}
        self._fetched: dict[TopicPartition, int] = {}
        self._attempts: dict[tuple[TopicPartition, int], int] = {}
        # per partition, the offset settled messages allow committing, and the one
        # committed: acks that come while a commit is in flight share the next one
        self._settled: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()
        # one consumer per broker: a second one started while the first joins the group
        # would stay in it, holding partitions nobody reads; one producer too: two batches
        # dead-lettering at once would each start one, and one would leak unclosed
        self._consumer_lock = asyncio.Lock()
        self._producer_lock = asyncio.Lock()

    @property
    def where(self) -> str:
        servers = self.bootstrap_servers
        return f"Kafka {servers if isinstance(servers, str) else ','.join(servers)}"

    @contextlib.contextmanager
    def errors(self, topic: str | None = None) -> Iterator[None]:
        """The one place aiokafka's exceptions become modelport errors, naming the topic
        (`topic`: the one written to, else the input)."""
        try:
            yield
        except KafkaError as exc:
            if getattr(exc, "retriable", False) or "Connection" in type(exc).__name__:
                raise unavailable(self.where, exc) from exc
            raise ModelportError(f"{self.where}, topic {(topic or self.topic)!r}: "
                                 f"{exc!r}") from exc

    async def _consumer_started(self) -> AIOKafkaConsumer:
        async with self._consumer_lock:
            if self._consumer is None:
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap_servers, group_id=self.group_id,
                    enable_auto_commit=False, auto_offset_reset=self.auto_offset_reset,
                    max_poll_interval_ms=self.max_poll_interval_ms,
                    session_timeout_ms=self.session_timeout_ms, **self._consumer_options)
                consumer.subscribe([self.topic], listener=_Forget(self))
                await _started(consumer)
                self._consumer = consumer
            return self._consumer

    async def _producer_started(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers,
                                            **self._producer_options)
                await _started(producer)
                self._producer = producer
            return self._producer

    async def start(self) -> None:
        with self.errors():
            await self._consumer_started()

    async def close(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(KafkaError, OSError):
                    await client.stop()
        self._consumer = self._producer = None

    # --- consuming ----------------------------------------------------------------------

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        with self.errors():
            consumer = await self._consumer_started()
            batches = await consumer.getmany(timeout_ms=max(int(timeout * 1000), 0),
                                             max_records=max_messages)
        messages: list[Message] = []
        for tp, records in batches.items():
            if not records:
                continue
            inflight = self._inflight.setdefault(tp, deque())
            self._done.setdefault(tp, set())
            seen = self._fetched.get(tp, -1)
            prefix = f"{tp.topic}:{tp.partition}:"
            for record in records:
                offset = record.offset
                attempt = 1 if offset > seen else self._again(tp, offset)
                inflight.append(offset)
                messages.append(Message(prefix + str(offset), record.value or b"", attempt,
                                        headers=_headers(record), handle=(tp, offset)))
            self._fetched[tp] = max(seen, records[-1].offset)
        return messages

    def _again(self, tp: TopicPartition, offset: int) -> int:
        """The attempt an offset fetched before is on now."""
        attempt = self._attempts.get((tp, offset), 1) + 1
        self._attempts[(tp, offset)] = attempt
        return attempt

    async def ack(self, messages: Sequence[Message]) -> None:
        touched: set[TopicPartition] = set()
        for m in messages:
            tp, offset = m.handle
            done = self._done.get(tp)
            if done is None:  # revoked by a rebalance: its new owner processes it
                continue
            done.add(offset)
            touched.add(tp)
        for tp in touched:
            inflight, done = self._inflight[tp], self._done[tp]
            last = None
            while inflight and inflight[0] in done:  # only an unbroken run of settled ones
                last = inflight.popleft()  # every delivery of it: its result is written
                if self._attempts:
                    self._attempts.pop((tp, last), None)
            if last is not None:
                # what is settled past the run waits for the gap before it to close
                self._done[tp] = {o for o in done if o > last} if inflight else set()
                self._settled[tp] = last + 1  # Kafka's offset: the next one to read
        # one commit at a time; an ack that waited for one finds its offsets in it, or
        # commits everything settled meanwhile at once (a commit is a round trip to the
        # group coordinator, and batches written side by side ack side by side)
        async with self._commit_lock:
            offsets = {tp: offset for tp, offset in self._settled.items()
                       if offset > self._committed.get(tp, -1) and tp in self._inflight}
            if not offsets:
                return
            with self.errors():
                consumer = await self._consumer_started()
                try:
                    await consumer.commit(offsets)
                except CommitFailedError as exc:
                    # a rebalance took the partitions: the written batch is redelivered
                    # to their new owner and upserted again, which changes nothing
                    log.warning("commit refused after a rebalance (%s); the new owner of "
                                "the partitions processes this batch again", exc)
                    for tp in offsets:
                        self._settled.pop(tp, None)
                    return
            self._committed.update(offsets)

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions taken away by a rebalance: their offsets are another member's."""
        for tp in partitions:
            self._inflight.pop(tp, None)
            self._done.pop(tp, None)
            self._fetched.pop(tp, None)
            self._settled.pop(tp, None)
            self._committed.pop(tp, None)
        self._attempts = {k: v for k, v in self._attempts.items() if k[0] not in partitions}

    # --- publishing and lag -------------------------------------------------------------

    async def publish(self, subject: str, payloads: Sequence[bytes],
                      keys: Sequence[str] | None = None) -> None:
        if not payloads:
            return
        with self.errors(subject):
            producer = await self._producer_started()
            futures = [await producer.send(subject, payload,
                                           key=keys[i].encode() if keys is not None else None)
                       for i, payload in enumerate(payloads)]
            for future in futures:
                await future  # stored by every in-sync replica

    async def lag(self) -> int | None:
        """Messages after the group's committed offsets on this member's partitions (the
        group's lag is the sum over its members); None before the consumer has started
        (asking never starts one) or joined its group."""
        consumer = self._consumer
        if consumer is None:
            return None
        with self.errors():
            partitions = list(consumer.assignment())
            if not partitions:
                return None
            ends = await consumer.end_offsets(partitions)
            total = 0
            for tp in partitions:
                committed = await consumer.committed(tp)
                total += max(ends[tp] - (committed or 0), 0)
        return total


def _headers(record: ConsumerRecord) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in record.headers} \
        if record.headers else {}


async def _started(client: Any) -> None:
    """Start an aiokafka client; one whose start fails or is cancelled is stopped, not
    left half-started (a consumer that joined its group would hold partitions)."""
    try:
        await client.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.shield(client.stop())
        raise


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    consumer = set(inspect.signature(AIOKafkaConsumer).parameters)
    producer = set(inspect.signature(AIOKafkaProducer).parameters)
    unknown = sorted(set(options) - consumer - producer)
    if unknown:
        raise ConfigError(f"kafka broker: unknown option(s) {', '.join(unknown)} (neither "
                          "aiokafka's consumer nor its producer takes them)")
    return ({k: v for k, v in options.items() if k in consumer},
            {k: v for k, v in options.items() if k in producer})


class _Forget(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.broker.forget(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None
