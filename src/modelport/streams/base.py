"""The broker contract every stream backend implements.

At-least-once, as the most trusted stream processors do it: a message is acknowledged
only after its result is written; one that is not acknowledged comes back (after the
broker's ack wait, or when a dead consumer's pending messages are claimed), with its
delivery count raised. Idempotent writers turn "at least once" into exactly one row
per message in the sink.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
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
        return {
            "id": self.message.id,
            "reason": self.reason,
            "deliveries": self.message.deliveries,
            "payload": self.message.payload.decode("utf-8", errors="replace"),
        }


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
    async def publish(self, subject: str, payloads: Sequence[bytes]) -> None:
        """Append messages to `subject` (an output or dead-letter stream/topic)."""

    async def dead_letter(self, letters: Sequence[DeadLetter], subject: str) -> None:
        """Set messages aside with their reason, then acknowledge them."""
        import orjson

        if letters:
            await self.publish(subject, [orjson.dumps(d.body()) for d in letters])
            await self.ack([d.message for d in letters])

    async def lag(self) -> int | None:
        """Messages waiting for this consumer group, when the broker can tell."""
        return None
