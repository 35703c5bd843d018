"""The stream worker: a broker as a pipeline's trigger.

Each cycle fetches a batch, scores it through the pipeline (the model's batcher), writes
the results, and only then acknowledges. Messages that cannot be decoded or fail
validation, and messages delivered `max_deliveries` times, go to the dead-letter
subject with the reason. An outage of a backing service (the sink or the broker) is
retried with backoff, holding the batch: nothing is acknowledged that was not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from modelport.errors import InvalidInput, ModelportError, NotReady
from modelport.monitoring.metrics import Metrics
from modelport.pipeline import Frame, Pipeline
from modelport.signature import Signature
from modelport.streams.base import Broker, DeadLetter, Message
from modelport.streams.codec import Codec, decode

log = logging.getLogger("modelport.stream")


@dataclass
class WorkerStats:
    processed: int = 0
    dead_lettered: int = 0
    redeliveries: int = 0
    batches: int = 0
    last_batch_s: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return self.processed / max(time.monotonic() - self.started, 1e-9)


class StreamWorker:
    def __init__(self, pipeline: Pipeline, broker: Broker, *, dead_letter_subject: str,
                 batch_size: int = 256, fetch_timeout: float = 1.0, max_deliveries: int = 5,
                 codec: Codec = "json", metrics: Metrics | None = None,
                 max_backoff: float = 30.0) -> None:
        self.pipeline = pipeline
        self.broker = broker
        self.dead_letter_subject = dead_letter_subject
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.max_deliveries = max_deliveries
        self.codec = codec
        self.metrics = metrics
        self.max_backoff = max_backoff
        self.stats = WorkerStats()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop fetching; the batch in flight is finished and acknowledged first."""
        self._stopping.set()

    async def run(self, *, burst: bool = False) -> WorkerStats:
        """Process until `stop()`; with `burst`, until a fetch comes back empty."""
        while not self._stopping.is_set():
            messages = await self._retry(
                lambda: self.broker.fetch(self.batch_size, self.fetch_timeout), "fetch")
            if messages is None:
                break
            if not messages:
                if burst:
                    break
                continue
            await self.handle(messages)
        return self.stats

    async def handle(self, messages: Sequence[Message]) -> None:
        """Score, write and acknowledge one batch (or dead-letter what cannot be)."""
        started = time.perf_counter()
        signature = self.pipeline.dataplane.deployment(self.pipeline.model).model.signature
        letters: list[DeadLetter] = []
        keys: list[str] = []
        records: list[dict[str, Any]] = []
        accepted: list[Message] = []
        for message in messages:
            if message.deliveries > 1:
                self.stats.redeliveries += 1
                if self.metrics is not None:
                    self.metrics.stream_redeliveries.labels(self.pipeline.name).inc()
            if message.deliveries > self.max_deliveries:
                letters.append(DeadLetter(message, (
                    f"delivered {message.deliveries} times without success "
                    f"(max_deliveries={self.max_deliveries})")))
                continue
            try:
                decoded = decode(message, self.codec)
                record = as_record(decoded.data, signature)
            except InvalidInput as exc:
                letters.append(DeadLetter(message, exc.message))
                continue
            if decoded.key is not None:
                record = {**record, "key": decoded.key}
            keys.append(decoded.id)
            records.append(record)
            accepted.append(message)
        if records:
            by_key = dict(zip(keys, accepted, strict=True))
            scored = await self._retry(
                lambda: self.pipeline.process(Frame.from_records(keys, records)), "write")
            if scored is None:  # stopping during an outage: leave them unacknowledged
                return
            rejected = {r.key for r in scored.rejects}
            letters += [DeadLetter(by_key[str(r.key)], r.reason) for r in scored.rejects]
            accepted = [m for k, m in by_key.items() if k not in rejected]
        if letters:
            await self._retry(lambda: self.broker.dead_letter(letters, self.dead_letter_subject),
                              "dead-letter")
        if accepted:
            await self._retry(lambda: self.broker.ack(accepted), "ack")
        self._account(len(accepted), len(letters), time.perf_counter() - started)

    async def _retry(self, action: Any, what: str) -> Any:
        """Run `action` until it succeeds, backing off through outages.

        Once stopping, a fetch or a write is abandoned (None): its messages stay
        unacknowledged and come back. An ack or a dead letter keeps trying, since the
        result it stands for has already been written.
        """
        delay = 0.1
        while True:
            if self._stopping.is_set() and what in ("fetch", "write") and delay > 0.1:
                return None
            try:
                return await action()
            except (NotReady, ConnectionError, OSError, TimeoutError) as exc:
                reason = exc.message if isinstance(exc, ModelportError) else repr(exc)
            except ModelportError as exc:
                if exc.status_code < 500:
                    raise
                reason = exc.message
            log.warning("%s failed (%s); retrying in %.1fs", what, reason, delay)
            if self.metrics is not None:
                self.metrics.stream_retries.labels(self.pipeline.name, what).inc()
            if self._stopping.is_set():
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self.max_backoff)

    def _account(self, processed: int, dead: int, seconds: float) -> None:
        self.stats.processed += processed
        self.stats.dead_lettered += dead
        self.stats.batches += 1
        self.stats.last_batch_s = seconds
        if self.metrics is not None:
            name = self.pipeline.name
            self.metrics.stream_messages.labels(name, "processed").inc(processed)
            self.metrics.stream_messages.labels(name, "dead_lettered").inc(dead)
            self.metrics.stream_batch_seconds.labels(name).observe(seconds)


def as_record(data: Any, signature: Signature) -> dict[str, Any]:
    """A message's data as one record of the model's inputs."""
    if isinstance(data, dict):
        return data
    names = [s.name for s in signature.inputs]
    if signature.layout == "tensor" and len(names) == 1:
        return {names[0]: data}
    if not isinstance(data, list) or len(data) != len(names):
        raise InvalidInput(
            f"expected a record or a row of {len(names)} values ({', '.join(names)})")
    return dict(zip(names, data, strict=True))
