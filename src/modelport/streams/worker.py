"""The stream worker: a broker as a pipeline's trigger.

Each batch is fetched, decoded into rounds of distinct ids (`rounds`) and scored
through the pipeline (the model's batcher), then written, and only then acknowledged.
Messages that cannot be decoded or fail validation, and messages delivered
`max_deliveries` times, go to the dead-letter subject with the reason. An outage of a
backing service (the sink, the broker, a model still loading) is retried with backoff,
holding the batch: nothing is acknowledged that was not written.

While batches are written and acknowledged, the next is fetched and scored; after a
full batch (more are waiting) the one after it is read while this one is scored, so
the broker prepares a reply while the worker computes, and stopping finishes a batch
read ahead like the one in flight. A writer that takes several frames at once
(`Writer.max_concurrent_writes`: a SQL database, each frame its own transaction)
writes that many batches side by side. A batch holding an id that a batch before it
is still writing waits for that write, so the last message about an id is the one
whose result is kept, as if they ran one at a time. Acknowledgements may then come
out of order, which every broker allows (Kafka commits only an unbroken run of
offsets). The overlap hides the broker's, the model's and the sink's latencies behind
one another.

A write that fails for another reason (the sink refuses a value, the model raises) is
narrowed down by halves to the messages it fails on, which are dead-lettered while the
rest are written. When no message of the batch can be written, or the error is a
`ConfigError` (a missing table or column, an unknown model), the fault is not in the
messages: the error is raised and the worker stops, rather than emptying the stream
into the dead-letter subject. The messages stay unacknowledged and come back, with
their delivery count raised. Dead letters are logged once they are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from modelport.connections import backoff_delay
from modelport.errors import (
    ConfigError,
    DeadlineExceeded,
    ModelportError,
    NotReady,
    Overloaded,
)
from modelport.monitoring.metrics import Metrics
from modelport.pipeline import Frame, Key, Pipeline, Reject, Scored
from modelport.signature import Signature
from modelport.streams.base import Broker, DeadLetter, Message
from modelport.streams.codec import Codec, Format, Typed, TypedDecoder
from modelport.streams.rounds import Round, read

log = logging.getLogger("modelport.stream")

T = TypeVar("T")
FIRST_RETRY_S = 0.1
"""The pause after a step's first failure; it doubles up to `max_backoff`."""

TRANSIENT: tuple[type[BaseException], ...] = (
    NotReady, Overloaded, DeadlineExceeded, ConnectionError, OSError, TimeoutError)
"""Errors that mean "a service is down or busy, try again": retried with backoff."""


@dataclass
class WorkerStats:
    processed: int = 0
    dead_lettered: int = 0
    abandoned: int = 0
    """Messages left unacknowledged by a stop during an outage (they come back)."""
    redeliveries: int = 0
    batches: int = 0
    last_batch_s: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return self.processed / max(time.monotonic() - self.started, 1e-9)


class _Abandoned(Exception):
    """A step given up on because the worker is stopping (its messages come back)."""


@dataclass
class _Batch:
    letters: list[DeadLetter]
    rounds: list[Round]
    started: float


class StreamWorker:
    def __init__(self, pipeline: Pipeline, broker: Broker, *, dead_letter_subject: str,
                 batch_size: int = 256, fetch_timeout: float = 1.0, max_deliveries: int = 5,
                 codec: Codec | Format = "json", metrics: Metrics | None = None,
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
        self._typed_for: Signature | None = None
        self._typed_decoder: Typed | None = None

    def stop(self) -> None:
        """Stop fetching; the batches in flight are finished and acknowledged first."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self, *, burst: bool = False) -> WorkerStats:
        """Process until `stop()`; with `burst`, until a fetch comes back empty."""
        writing: deque[tuple[asyncio.Task[None], set[Key]]] = deque()
        fetching: asyncio.Task[Sequence[Message] | None] | None = None
        try:
            while True:
                if fetching is None:
                    if self._stopping.is_set():
                        break
                    fetching = asyncio.ensure_future(self._fetch())
                messages, fetching = await fetching, None
                if messages is None or (burst and not messages):
                    break
                if not messages:
                    continue
                fetching = await self._read_ahead(messages)
                batch = await self._prepare(messages)
                if batch is not None:
                    await self._start_writing(batch, writing)
            while writing:
                await writing.popleft()[0]
        except asyncio.CancelledError:  # abandoned (the drain timeout): so are the writes
            await _drop(fetching)
            for task, _ in writing:
                task.cancel()
            for task, _ in writing:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            raise
        except Exception:  # a batch failed for good: the others are written first
            await _drop(fetching)
            for task, _ in writing:
                with contextlib.suppress(Exception):
                    await task
            raise
        return self.stats

    async def _fetch(self) -> Sequence[Message] | None:
        """The next batch; None when abandoned (stopping during an outage)."""
        try:
            return await self._retry(
                lambda: self.broker.fetch(self.batch_size, self.fetch_timeout), "fetch")
        except _Abandoned:
            return None

    async def _read_ahead(self, messages: Sequence[Message]
                          ) -> asyncio.Task[Sequence[Message] | None] | None:
        """After a full batch (more are waiting), the next fetch, started now: the broker
        prepares its reply while this batch is scored. Stopping finishes the batch it
        reads like the one in flight."""
        if len(messages) < self.batch_size or self._stopping.is_set():
            return None
        task = asyncio.ensure_future(self._fetch())
        await asyncio.sleep(0)  # its request goes out before this batch is decoded
        return task

    async def _start_writing(self, batch: _Batch,
                             writing: deque[tuple[asyncio.Task[None], set[Key]]]) -> None:
        ids: set[Key] = set().union(*(r.frame.keys for r in batch.rounds))
        # the writer's room, and results in message order: a batch about an id still
        # being written waits for that write
        while writing and (len(writing) >= self._write_concurrency()
                           or any(ids & busy for _, busy in writing)):
            await writing.popleft()[0]
        writing.append((asyncio.create_task(self._finish(batch)), ids))

    def _write_concurrency(self) -> int:
        writer = self.pipeline.writer
        return max(1, writer.max_concurrent_writes) if writer is not None else 1

    async def handle(self, messages: Sequence[Message]) -> None:
        """Score, write and acknowledge one batch (or dead-letter what cannot be)."""
        batch = await self._prepare(messages)
        if batch is not None:
            await self._finish(batch)

    # --- stage 1: decode and score --------------------------------------------------------

    async def _prepare(self, messages: Sequence[Message]) -> _Batch | None:
        started = time.perf_counter()
        try:
            signature = await self._retry(self._signature, "model")
            if not isinstance(self.codec, str):  # schemas from a registry: an outage holds
                await self._retry(functools.partial(self.codec.resolve, messages),
                                  "schema registry")
            letters, rounds = self._decode(messages, signature)
            for r in rounds:
                try:
                    r.scored = await self._retry(
                        functools.partial(self.pipeline.score, r.frame), "score")
                except _Abandoned:
                    raise
                except Exception as exc:  # narrowed down to its messages when written
                    r.error = exc
        except _Abandoned:  # stopping during an outage: nothing acknowledged, all return
            self.stats.abandoned += len(messages)
            return None
        return _Batch(letters, rounds, started)

    async def _signature(self) -> Signature | None:
        # inside the retry: a model still loading (NotReady) holds the batch, like an outage
        if self.pipeline.model is None:
            return None
        return self.pipeline.dataplane.deployment(self.pipeline.model).model.signature

    def _typed(self, signature: Signature | None) -> Typed | None:
        # made once per signature: a new model version may take other inputs
        if signature is not self._typed_for:
            self._typed_for = signature
            self._typed_decoder = \
                TypedDecoder.for_signature(signature, self.codec) \
                if isinstance(self.codec, str) else self.codec.typed(signature)
        return self._typed_decoder

    def _decode(self, messages: Sequence[Message], signature: Signature | None
                ) -> tuple[list[DeadLetter], list[Round]]:
        letters, rounds, redeliveries = read(messages, signature, self._typed(signature),
                                             self.codec, self.max_deliveries)
        if redeliveries:
            self.stats.redeliveries += redeliveries
            if self.metrics is not None:
                self.metrics.stream_redeliveries.labels(self.pipeline.name).inc(redeliveries)
        return letters, rounds

    # --- stage 2: write, dead-letter, acknowledge -----------------------------------------

    async def _finish(self, batch: _Batch) -> None:
        letters, accepted = list(batch.letters), []
        for i, r in enumerate(batch.rounds):
            try:
                rejects = await self._write_round(r)
            except _Abandoned:  # stopping during an outage: the rest stay unacknowledged
                self.stats.abandoned += sum(len(left.messages) for left in batch.rounds[i:])
                break
            if not rejects:
                accepted += r.messages
                continue
            rejected = {j.key: j.reason for j in rejects}
            for ident, message in zip(r.frame.keys, r.messages, strict=True):
                if ident in rejected:
                    letters.append(DeadLetter(message, rejected[ident]))
                else:
                    accepted.append(message)
        # acks and dead letters are never abandoned: what they stand for is written
        if letters:
            await self._retry(lambda: self.broker.dead_letter(letters, self.dead_letter_subject),
                              "dead-letter", abandon=False)
            log.warning("dead-lettered %d of %d messages to %s (%s)", len(letters),
                        sum(len(r.messages) for r in batch.rounds) + len(batch.letters),
                        self.dead_letter_subject, letters[0].reason)
        if accepted:
            await self._retry(lambda: self.broker.ack(accepted), "ack", abandon=False)
        self._account(len(accepted), len(letters), time.perf_counter() - batch.started)

    async def _write_round(self, r: Round) -> list[Reject]:
        """Write a scored round; the rows rejected, by the model's signature or the sink."""
        if r.error is None and r.scored is not None:
            scored = r.scored
            if (self.pipeline.writer is None and scored.shadow is None) \
                    or not len(scored.results):
                return scored.rejects
            try:
                await self._retry(functools.partial(self.pipeline.write, scored), "write")
                return scored.rejects
            except _Abandoned:
                raise
            except Exception as exc:
                r.error = exc
        assert r.error is not None
        if isinstance(r.error, ConfigError):  # not the messages' fault: stop, unacked
            raise r.error
        rejects, written = await self._isolate(r.frame, r.error)
        if not written:
            raise r.error
        return rejects

    async def _isolate(self, frame: Frame, error: Exception) -> tuple[list[Reject], int]:
        """Narrow a failed round down to its messages by halves, scoring and writing each
        half again: the rejects, with the error each one gave, and the rows written."""
        if len(frame) == 1:
            reason = error.message if isinstance(error, ModelportError) else \
                f"{type(error).__name__}: {error}"
            return [Reject(frame.keys[0], reason)], 0
        rejects: list[Reject] = []
        written = 0
        middle = len(frame) // 2
        for half in (frame.take(range(middle)), frame.take(range(middle, len(frame)))):
            try:
                scored = await self._retry(functools.partial(self._score_write, half),
                                           "write")
            except (_Abandoned, ConfigError):
                raise
            except Exception as exc:
                more, done = await self._isolate(half, exc)
                rejects += more
                written += done
            else:
                rejects += scored.rejects
                written += len(half) - len(scored.rejects)
        return rejects, written

    async def _score_write(self, frame: Frame) -> Scored:
        scored = await self.pipeline.score(frame)
        await self.pipeline.write(scored)
        return scored

    async def _retry(self, action: Callable[[], Awaitable[T]], what: str, *,
                     abandon: bool = True) -> T:
        """Run `action` until it succeeds, backing off through outages.

        Once stopping, a step that may be abandoned (a fetch, a score, a write) is given
        up after a failure (`_Abandoned`): its messages stay unacknowledged and come
        back. An ack or a dead letter keeps trying, since the result it stands for has
        been written; the command's drain timeout bounds that.
        """
        attempt = 0
        while True:
            if abandon and self._stopping.is_set() and attempt:
                raise _Abandoned(what)
            try:
                return await action()
            except TRANSIENT as exc:
                reason = exc.message if isinstance(exc, ModelportError) else repr(exc)
            delay = backoff_delay(attempt, FIRST_RETRY_S, cap=self.max_backoff)
            attempt += 1
            log.warning("%s failed (%s); retrying in %.1fs", what, reason, delay)
            if self.metrics is not None:
                self.metrics.stream_retries.labels(self.pipeline.name, what).inc()
            if self._stopping.is_set():
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

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


async def _drop(task: asyncio.Task[T] | None) -> None:
    """Cancel a fetch no batch will come from (the messages it read, if any, are not
    acknowledged and come back), and collect its end."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
