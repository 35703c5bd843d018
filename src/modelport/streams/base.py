"""The broker contract every stream backend implements.

At-least-once, as the most trusted stream processors do it: a message is acknowledged
only after its result is written; one that is not acknowledged comes back (after the
broker's ack wait, or when a dead consumer's pending messages are claimed), with its
delivery count raised. Idempotent writers turn "at least once" into exactly one row
per message in the sink.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Message:
    """One delivery of a message."""

    id: str
    """The broker's id of this message (stream entry id, sequence, partition/offset)."""
    payload: bytes
    deliveries: int = 1
    """How many times it has been delivered, this time included."""
    headers: dict[str, str] = field(default_factory=dict)
    handle: Any = None
    """Whatever the broker needs to ack it (a NATS msg, a Kafka TopicPartition, …)."""


@dataclass
class DeadLetter:
    """What goes to the dead-letter stream: never dropped, never retried forever."""

    message: Message
    reason: str

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.message.id,
            "reason": self.reason,
            "deliveries": self.message.deliveries,
        }
        if self.message.headers:
            body["headers"] = self.message.headers
        try:
            body["payload"] = self.message.payload.decode("utf-8")
        except UnicodeDecodeError:
            # msgpack and other binary payloads: decoding with "replace" would lose bytes,
            # and a dead letter must be replayable exactly
            body["payload_base64"] = base64.b64encode(self.message.payload).decode("ascii")
        return body


class Broker(ABC):
    """A consumer group on one stream (and a publisher for outputs and dead letters)."""

    name: str = "broker"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @abstractmethod
    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages` messages for this consumer, waiting at most `timeout`
        seconds for the first; includes redeliveries of unacknowledged messages."""

    @abstractmethod
    async def ack(self, messages: Sequence[Message]) -> None:
        """Mark processed: they will not be delivered again."""

    @abstractmethod
    async def publish(self, subject: str, payloads: Sequence[bytes],
                      keys: Sequence[str] | None = None) -> None:
        """Append messages to `subject` (an output or dead-letter stream/topic).

        `keys` (one per payload) name what each message is about, e.g. the id of the
        input message it answers: Kafka's record key, JetStream's de-duplication id, a
        field of a Redis stream entry."""

    async def dead_letter(self, letters: Sequence[DeadLetter], subject: str) -> None:
        """Set messages aside with their reason, then acknowledge them.

        Published before the ack: a crash in between publishes a letter twice rather
        than losing it."""
        import orjson

        if letters:
            await self.publish(subject, [orjson.dumps(d.body()) for d in letters],
                               keys=[d.message.id for d in letters])
            await self.ack([d.message for d in letters])

    async def lag(self) -> int | None:
        """Messages this consumer group has not acknowledged yet (not delivered, or
        delivered and in flight), when the broker can tell."""
        return None
