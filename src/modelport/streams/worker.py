"""The stream worker: a broker as a pipeline's trigger.

Each cycle fetches a batch, scores it through the pipeline (the model's batcher), writes
the results, and only then acknowledges. Messages that cannot be decoded or fail
validation, and messages delivered `max_deliveries` times, go to the dead-letter
subject with the reason. An outage of a backing service (the sink, the broker, a model
still loading) is retried with backoff, holding the batch: nothing is acknowledged that
was not written.

A write that fails for another reason (the sink refuses a value, the model raises) is
narrowed down by halves to the messages it fails on, which are dead-lettered while the
rest are written. When no message of the batch can be written, the fault is not in the
messages (a wrong table, a broken model): the error is raised and the worker stops,
rather than emptying the stream into the dead-letter subject. The messages stay
unacknowledged and come back, with their delivery count raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from modelport.errors import DeadlineExceeded, InvalidInput, ModelportError, NotReady, Overloaded
from modelport.monitoring.metrics import Metrics
from modelport.pipeline import Frame, Pipeline, Reject
from modelport.signature import Signature
from modelport.streams.base import Broker, DeadLetter, Message
from modelport.streams.codec import Codec, decode

log = logging.getLogger("modelport.stream")

T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    NotReady, Overloaded, DeadlineExceeded, ConnectionError, OSError, TimeoutError)
"""Errors that mean "a service is down or busy, try again": retried with backoff."""


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


class _Abandoned(Exception):
    """A step given up on because the worker is stopping (its messages come back)."""


@dataclass
class _Row:
    id: str
    record: dict[str, Any]
    message: Message


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

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self, *, burst: bool = False) -> WorkerStats:
        """Process until `stop()`; with `burst`, until a fetch comes back empty."""
        while not self._stopping.is_set():
            try:
                messages = await self._retry(
                    lambda: self.broker.fetch(self.batch_size, self.fetch_timeout), "fetch")
            except _Abandoned:
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
        try:
            signature = await self._retry(self._signature, "model")
        except _Abandoned:
            return
        letters, rounds = self._decode(messages, signature)
        accepted: list[Message] = []
        for rows in rounds:
            try:
                rejects = await self._process(rows)
            except _Abandoned:  # stopping during an outage: the rest stay unacknowledged
                break
            rejected = {r.key: r.reason for r in rejects}
            for row in rows:
                if row.id in rejected:
                    letters.append(DeadLetter(row.message, rejected[row.id]))
                else:
                    accepted.append(row.message)
        # acks and dead letters are never abandoned: what they stand for is written
        if letters:
            await self._retry(lambda: self.broker.dead_letter(letters, self.dead_letter_subject),
                              "dead-letter", abandon=False)
        if accepted:
            await self._retry(lambda: self.broker.ack(accepted), "ack", abandon=False)
        self._account(len(accepted), len(letters), time.perf_counter() - started)

    async def _signature(self) -> Signature | None:
        # inside the retry: a model still loading (NotReady) holds the batch, like an outage
        if self.pipeline.model is None:  # a pipeline that only moves data: records as sent
            return None
        return self.pipeline.dataplane.deployment(self.pipeline.model).model.signature

    def _decode(self, messages: Sequence[Message], signature: Signature | None
                ) -> tuple[list[DeadLetter], list[list[_Row]]]:
        """Dead letters, and the rows to score in rounds of distinct ids.

        The same id twice in one batch (a producer's retry, say) goes into a later
        round, so that each round upserts one row per id and the batch ends as the
        messages would have one after the other."""
        letters: list[DeadLetter] = []
        rounds: list[list[_Row]] = []
        seen: dict[str, int] = {}
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
            turn = seen.get(decoded.id, 0)
            seen[decoded.id] = turn + 1
            if turn == len(rounds):
                rounds.append([])
            rounds[turn].append(_Row(decoded.id, record, message))
        return letters, rounds

    async def _process(self, rows: list[_Row]) -> list[Reject]:
        """Score and write rows with distinct ids; the rejected ones, with reasons."""
        try:
            return await self._write(rows)
        except _Abandoned:
            raise
        except Exception as exc:
            rejects, written = await self._isolate(rows, exc)
            if not written:
                raise
            return rejects

    async def _write(self, rows: list[_Row]) -> list[Reject]:
        frame = Frame.from_records([r.id for r in rows], [r.record for r in rows])
        scored = await self._retry(lambda: self.pipeline.process(frame), "write")
        return scored.rejects

    async def _isolate(self, rows: list[_Row], error: Exception) -> tuple[list[Reject], int]:
        """Narrow a failed write down to its messages by halves: the rejects, with the
        error each one's write gave, and how many rows were written."""
        if len(rows) == 1:
            reason = error.message if isinstance(error, ModelportError) else \
                f"{type(error).__name__}: {error}"
            return [Reject(rows[0].id, reason)], 0
        rejects: list[Reject] = []
        written = 0
        middle = len(rows) // 2
        for half in (rows[:middle], rows[middle:]):
            try:
                refused = await self._write(half)
            except (_Abandoned, asyncio.CancelledError):
                raise
            except Exception as exc:
                more, done = await self._isolate(half, exc)
                rejects += more
                written += done
            else:
                rejects += refused
                written += len(half) - len(refused)
        if rejects:
            log.warning("%d of %d messages could not be written (%s); dead-lettering them",
                        len(rejects), len(rows), rejects[0].reason)
        return rejects, written

    async def _retry(self, action: Callable[[], Awaitable[T]], what: str, *,
                     abandon: bool = True) -> T:
        """Run `action` until it succeeds, backing off through outages.

        Once stopping, a step that may be abandoned (a fetch, a write) is given up after
        a failure (`_Abandoned`): its messages stay unacknowledged and come back. An ack
        or a dead letter keeps trying, since the result it stands for has been written;
        the command's drain timeout bounds that.
        """
        delay = 0.1
        while True:
            if abandon and self._stopping.is_set() and delay > 0.1:
                raise _Abandoned(what)
            try:
                return await action()
            except TRANSIENT as exc:
                reason = exc.message if isinstance(exc, ModelportError) else repr(exc)
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


def as_record(data: Any, signature: Signature | None) -> dict[str, Any]:
    """A message's data as one record of the model's inputs (or, for a pipeline
    without a model, as the record it is)."""
    if isinstance(data, dict):
        return data
    if signature is None:
        raise InvalidInput("expected a record (a JSON object): this pipeline has no model "
                           "whose inputs would name a row's values")
    names = [s.name for s in signature.inputs]
    if signature.layout == "tensor" and len(names) == 1:
        return {names[0]: data}
    if not isinstance(data, list) or len(data) != len(names):
        raise InvalidInput(
            f"expected a record or a row of {len(names)} values ({', '.join(names)})")
    return dict(zip(names, data, strict=True))
