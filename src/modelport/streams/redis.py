"""Redis Streams: a consumer group read with XREADGROUP, settled with XACK.

Every entry a consumer reads stays in the group's pending entries list (PEL) until it
is acknowledged. A worker that dies leaves its entries there; the others take them
over with XAUTOCLAIM once they have been idle `claim_idle_ms` (which must exceed the
longest batch, or a live worker's batch is claimed and written twice: harmless with an
idempotent writer, but wasted). A worker restarted under the same `consumer` name
reads its own pending entries back first, without waiting. Each claim or re-read
raises the entry's delivery count, which XPENDING reports.

An entry's payload is its `field` field (default `payload`); an entry without it (a
producer writing `XADD s * user 7 track 42`) is handed on as the JSON object of all its
fields, whose values are strings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis import exceptions as rx

from modelport.connections import redact
from modelport.connections.redis import redis_errors
from modelport.streams.base import Broker, Message

log = logging.getLogger("modelport.stream.redis")

# Deletes, in one atomic step, consumers that hold no pending entries and have been idle
# longer than ARGV[2] ms (left behind by restarts under new names). Atomic, because
# deleting a consumer drops its pending entries: checked and deleted in two round trips,
# a consumer could read entries in between and they would be lost.
_PRUNE = """
local removed = 0
for _, entry in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #entry, 2 do info[entry[i]] = entry[i + 1] end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[2]) and info['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""


class RedisStreamsBroker(Broker):
    """A consumer `consumer` in group `group` on stream `stream` of Redis at `url`.

    `start_id` is where a new group starts: `0`, the whole stream (nothing published
    before the first worker started is missed), or `$`, only what comes next.
    `maxlen` trims what this broker publishes (outputs, dead letters) to about that
    many entries; the input stream is its producer's to trim. Consumers that restarted
    under other names are removed once idle for `prune_idle_ms` with nothing pending.
    """

    name = "redis"

    def __init__(self, url: str, stream: str, group: str, consumer: str | None = None,
                 claim_idle_ms: int = 30_000, *, field: str = "payload", start_id: str = "0",
                 maxlen: int | None = None, prune_idle_ms: int | None = 3_600_000) -> None:
        self.url = url
        self.stream = stream
        self.group = group
        # host and pid: unique per process; on Kubernetes (pid 1) the pod's name, so a
        # restarted container reads its own pending entries back at once
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = claim_idle_ms
        self.field = field.encode()
        self.start_id = start_id
        self.maxlen = maxlen
        self.prune_idle_ms = prune_idle_ms
        self._client: aioredis.Redis | None = None
        self._group_ready = False
        self._own_cursor: bytes | None = b"0"  # None once our own PEL has been read back
        self._claim_cursor = b"0-0"
        self._next_claim = 0.0
        self._next_prune = 0.0

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.from_url(self.url)
        return self._client

    @property
    def where(self) -> str:
        return f"Redis {redact(self.url)}"

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return redis_errors(self.where, f", stream {self.stream!r}")

    async def start(self) -> None:
        with self.errors():
            await self.client.ping()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- consuming ----------------------------------------------------------------------

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        with self.errors():
            try:
                return await self._fetch(max_messages, timeout)
            except rx.ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                # the stream or group was deleted under us: make it again, read on
                self._group_ready = False
                return await self._fetch(max_messages, timeout)

    async def _fetch(self, max_messages: int, timeout: float) -> list[Message]:
        if not self._group_ready:
            await self._create_group()
        while self._own_cursor is not None:
            entries = await self._entries(self._own_cursor, max_messages, None)
            if not entries:
                self._own_cursor = None
                break
            self._own_cursor = entries[-1][0]
            messages = await self._live(entries)
            if messages:
                return await self._with_deliveries(messages)
        if time.monotonic() >= self._next_claim:
            claimed = await self._claim(max_messages)
            if claimed:
                return claimed
        # BLOCK 0 would wait forever: no timeout means do not block at all
        block = max(int(timeout * 1000), 1) if timeout > 0 else None
        return await self._read(b">", max_messages, block)

    async def _create_group(self) -> None:
        try:
            await self.client.xgroup_create(self.stream, self.group, id=self.start_id,
                                            mkstream=True)
        except rx.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):  # it exists: the usual case
                raise
        self._group_ready = True

    async def _entries(self, cursor: bytes, count: int, block: int | None
                       ) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        reply: Any = await self.client.xreadgroup(
            self.group, self.consumer, {self.stream: cursor}, count=count, block=block)
        return list(reply[0][1]) if reply else []

    async def _read(self, cursor: bytes, count: int, block: int | None) -> list[Message]:
        return await self._live(await self._entries(cursor, count, block))

    async def _live(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]
                    ) -> list[Message]:
        """Messages of pending entries; those trimmed from the stream since they were
        delivered (no fields: nil, or {} as redis-py parses it) cannot be processed, so
        they leave the PEL. (An entry always has a field: XADD requires one.)"""
        gone = [entry_id for entry_id, fields in entries if not fields]
        if gone:
            log.warning("%d pending entries of %s were trimmed from the stream before "
                        "they were processed", len(gone), self.stream)
            await self.client.xack(self.stream, self.group, *gone)
        return [self._message(i, f) for i, f in entries if f]

    async def _claim(self, count: int) -> list[Message]:
        """Take over entries other consumers left pending longer than `claim_idle_ms`."""
        reply: Any = await self.client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms,
            start_id=self._claim_cursor, count=count)
        self._claim_cursor = reply[0]
        if self._claim_cursor == b"0-0":
            # a whole pass over the PEL: look again in a quarter of the idle time, so a
            # dead worker's entries wait at most 1.25 x claim_idle_ms
            self._next_claim = time.monotonic() + min(self.claim_idle_ms / 4000, 5.0)
            await self._prune()
        # (Redis 7 drops entries deleted from the stream from the PEL and lists them
        # apart; Redis 6.2 hands them back with no fields)
        return await self._with_deliveries(await self._live(list(reply[1])))

    async def _with_deliveries(self, messages: list[Message]) -> list[Message]:
        """Delivery counts of re-read or claimed entries, from XPENDING."""
        if not messages:
            return messages
        pending: Any = await self.client.xpending_range(
            self.stream, self.group, messages[0].id, messages[-1].id,
            len(messages), consumername=self.consumer)
        counts = {p["message_id"].decode(): int(p["times_delivered"]) for p in pending}
        for message in messages:
            message.deliveries = counts.get(message.id, 2)
        return messages

    async def _prune(self) -> None:
        if self.prune_idle_ms is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + 60
        await self.client.eval(_PRUNE, 1, self.stream, self.group, self.prune_idle_ms,
                               self.consumer)

    def _message(self, entry_id: bytes, fields: dict[bytes, bytes]) -> Message:
        payload = fields.get(self.field)
        if payload is None:
            payload = orjson.dumps({k.decode(errors="replace"): v.decode(errors="replace")
                                    for k, v in fields.items()})
        return Message(entry_id.decode(), payload)

    async def ack(self, messages: Sequence[Message]) -> None:
        if messages:
            with self.errors():
                await self.client.xack(self.stream, self.group, *(m.id for m in messages))

    # --- publishing and lag -------------------------------------------------------------

    async def publish(self, subject: str, payloads: Sequence[bytes],
                      keys: Sequence[str] | None = None) -> None:
        if not payloads:
            return
        with self.errors():
            async with self.client.pipeline(transaction=False) as pipe:
                for i, payload in enumerate(payloads):
                    fields: dict[Any, Any] = {self.field: payload}
                    if keys is not None:
                        fields["key"] = keys[i]
                    pipe.xadd(subject, fields, maxlen=self.maxlen, approximate=True)
                await pipe.execute()

    async def lag(self) -> int | None:
        """Entries not yet delivered to the group (XINFO GROUPS `lag`, Redis 7) plus
        those delivered and not acknowledged; None where Redis cannot tell the lag (an
        entry deleted from the middle of the stream)."""
        with self.errors():
            try:
                groups: Any = await self.client.xinfo_groups(self.stream)
            except rx.ResponseError:  # no stream yet
                return 0
        for group in groups:
            if group["name"].decode() == self.group:
                lag = group.get("lag")
                return None if lag is None else int(lag) + int(group["pending"])
        return None
