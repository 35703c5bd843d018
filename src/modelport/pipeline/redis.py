"""Redis as pipeline components (redis-py's asyncio client: the `redis` extra).

One Redis key per row: `prefix + str(key)`, holding either a hash (`format="hash"`, one
field per column) or a JSON object (`format="json"`). Many keys cost one round trip:
a pipeline of `HGETALL`s, or `MGET`.

Hash fields are strings; reading them back parses what looks like a number (`"3"` → 3,
`"0.25"` → 0.25) and a JSON array or object (`"[0.1,0.9]"`). Writing stores numbers as
text, booleans as 1/0, a multi-dimensional row (class probabilities) as a JSON array,
and leaves out missing values (NaN, None). A JSON document keeps types as JSON has them.

The client reconnects by itself: a connection an outage broke is replaced on the next
call. While Redis cannot be reached, calls fail fast with a `NotReady` (503) naming
it (`errors`, the one place redis-py's exceptions are translated).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any, Literal

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from modelport.connections import redact
from modelport.connections.redis import redis_errors
from modelport.errors import ConfigError, ModelportError
from modelport.pipeline.base import Component, Frame, Key, Retriever, Writer
from modelport.pipeline.columns import cells, frame_from_records, plain_keys

Format = Literal["hash", "json"]
CHUNK = 5_000
"""Keys per pipeline sent at once: bounds the memory of one request and one reply."""
_INT = re.compile(r"[-+]?\d+\Z")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\Z")


class _Redis(Component):
    """The client's lifecycle and error translation shared by reader and writer."""

    def __init__(self, url: str, prefix: str, format: Format, timeout: float) -> None:
        if format not in ("hash", "json"):
            raise ConfigError(f"redis: format must be 'hash' or 'json', not {format!r}")
        self.url, self.prefix, self.format, self.timeout = url, prefix, format, timeout
        self._client: Redis | None = None

    @property
    def client(self) -> Redis:
        if self._client is None:
            try:
                self._client = Redis.from_url(
                    self.url, decode_responses=True,
                    socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                    # one quick retry replaces a connection that died while idle (a
                    # Redis restart); more would only delay the 503 of a real outage
                    retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1))
            except ValueError as exc:
                raise ConfigError(f"redis: {redact(self.url)!r} is not a Redis URL: "
                                  f"{exc}") from None
        return self._client

    @property
    def where(self) -> str:
        return f"Redis {redact(self.url)}"

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return redis_errors(self.where)

    def name(self, key: Key) -> str:
        return f"{self.prefix}{key}"

    async def start(self) -> None:
        await self.check()

    async def check(self) -> None:
        with self.errors():
            await self.client.ping()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class RedisRetriever(_Redis, Retriever):
    """Rows stored under `prefix + key` as hashes or JSON objects."""

    def __init__(self, url: str, prefix: str = "features:", format: Format = "hash",
                 timeout: float = 2.0) -> None:
        super().__init__(url, prefix, format, timeout)

    async def get(self, keys: Sequence[Key]) -> Frame:
        found: list[Key] = []
        records: list[dict[str, Any]] = []
        with self.errors():
            async with self.client.pipeline(transaction=False) as pipe:
                for i in range(0, len(keys), CHUNK):
                    part = keys[i:i + CHUNK]
                    if self.format == "hash":
                        for key in part:
                            pipe.hgetall(self.name(key))
                    else:
                        pipe.mget([self.name(k) for k in part])
                    replies = await pipe.execute()
                    if self.format == "json":
                        replies = replies[0]
                    for key, reply in zip(part, replies, strict=True):
                        if reply:  # an absent key is an empty hash or None
                            found.append(key)
                            records.append(self._record(key, reply))
        return frame_from_records(found, records)

    def _record(self, key: Key, reply: Any) -> dict[str, Any]:
        if self.format == "hash":
            return {field: _parse(value) for field, value in reply.items()}
        try:
            record = orjson.loads(reply)
        except orjson.JSONDecodeError as exc:
            raise ModelportError(f"{self.where}: {self.name(key)!r} is not JSON: {exc}") \
                from None
        if not isinstance(record, dict):
            raise ModelportError(f"{self.where}: {self.name(key)!r} holds a JSON "
                                 f"{type(record).__name__}, not an object")
        return record


class RedisWriter(_Redis, Writer):
    """Each row to `prefix + key`, replacing what was there; `ttl` seconds to live."""

    def __init__(self, url: str, prefix: str = "scores:", format: Format = "hash",
                 ttl: float | None = None, timeout: float = 2.0) -> None:
        super().__init__(url, prefix, format, timeout)
        if ttl is not None and ttl <= 0:
            raise ConfigError(f"redis writer: ttl must be positive seconds, not {ttl!r}")
        self.ttl = ttl

    async def write(self, frame: Frame) -> None:
        nested = "json" if self.format == "hash" else "list"
        columns = {n: cells(v, nested=nested) for n, v in frame.columns.items()}
        keys = plain_keys(frame.keys)
        ttl_ms = None if self.ttl is None else max(1, round(self.ttl * 1000))
        with self.errors():
            for i in range(0, len(keys), CHUNK):
                # MULTI/EXEC: a reader never sees a hash between its DEL and its HSET
                async with self.client.pipeline(transaction=True) as pipe:
                    for row in range(i, min(i + CHUNK, len(keys))):
                        self._queue(pipe, self.name(keys[row]),
                                    {n: c[row] for n, c in columns.items()}, ttl_ms)
                    await pipe.execute()

    def _queue(self, pipe: Any, name: str, record: dict[str, Any], ttl_ms: int | None
               ) -> None:
        if self.format == "json":
            pipe.set(name, orjson.dumps(record), px=ttl_ms)
            return
        fields = {f: int(v) if isinstance(v, bool) else v
                  for f, v in record.items() if v is not None}
        pipe.delete(name)  # fields of an earlier result that this one lacks go too
        if fields:
            pipe.hset(name, mapping=fields)
            if ttl_ms is not None:
                pipe.pexpire(name, ttl_ms)


def _parse(value: str) -> Any:
    """A hash field's text as the number or JSON it spells, else the text itself."""
    if _INT.match(value):
        return int(value)
    if _FLOAT.match(value):
        return float(value)
    if value[:1] in ("[", "{"):
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(value)
    return value




def _glob(text: str) -> str:
    """`text` matched literally in a SCAN pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
