"""An in-memory broker with consumer-group semantics, for unit tests and demos.

Unacknowledged messages come back after `ack_wait` seconds, like a real broker's
pending entries after a consumer died.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from modelport.streams.base import Broker, Message


@dataclass
class _Entry:
    id: str
    payload: bytes
    deliveries: int = 0
    leased_until: float = 0.0
    acked: bool = False


class MemoryBus:
    """Streams by name, shared by every `MemoryBroker` made over it (one process)."""

    def __init__(self) -> None:
        self.streams: dict[str, list[_Entry]] = {}
        self.changed = asyncio.Event()

    def append(self, stream: str, payload: bytes) -> str:
        entries = self.streams.setdefault(stream, [])
        entry = _Entry(f"{len(entries) + 1}", payload)
        entries.append(entry)
        self.changed.set()
        return entry.id

    def messages(self, stream: str) -> list[bytes]:
        return [e.payload for e in self.streams.get(stream, [])]


class MemoryBroker(Broker):
    name = "memory"

    def __init__(self, bus: MemoryBus, stream: str, *, ack_wait: float = 30.0) -> None:
        self.bus = bus
        self.stream = stream
        self.ack_wait = ack_wait

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            ready = [e for e in self.bus.streams.get(self.stream, [])
                     if not e.acked and e.leased_until <= now][:max_messages]
            if ready or now >= deadline:
                break
            self.bus.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.bus.changed.wait(), min(deadline - now, 0.05))
        for e in ready:
            e.deliveries += 1
            e.leased_until = now + self.ack_wait
        return [Message(e.id, e.payload, e.deliveries, handle=e) for e in ready]

    async def ack(self, messages: Sequence[Message]) -> None:
        for m in messages:
            m.handle.acked = True

    async def publish(self, subject: str, payloads: Sequence[bytes],
                      keys: Sequence[str] | None = None) -> None:
        for payload in payloads:
            self.bus.append(subject, payload)

    async def lag(self) -> int | None:
        return sum(not e.acked for e in self.bus.streams.get(self.stream, []))
