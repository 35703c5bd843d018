"""Adaptive batching: concurrent requests for one model coalesce into one model call.

A batch closes on size, or as soon as the model is free: an idle model runs a lone
request at once (no fixed window to wait out), while requests that arrive during a
model call queue up and form the next batch. `max_delay_ms` adds a short wait for
company only when the last batch showed there is concurrency to wait for.

A model given as a plain function runs on the batcher's own threads ("lanes"), which
take the next batch off the queue themselves as soon as the last one is done: the
event loop only admits requests and hands answers back. A lane with nothing to do
sleeps until the end of the loop turn that admitted work (`handoff.Handoff`): one
wake-up per turn, not one per request. Under overload the loop is
busy refusing the excess, and a model that needed loop turns between batches would
sit idle behind that work while its queue is full (goodput collapses). On lanes the
wait for company is the rest of the loop's current turn (the requests it is taking
in), bounded by `max_delay_ms`. A coroutine function (a model run on the loop) is
batched by a task on the loop instead, whose wait for company is the same: the rest
of the loop's turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from modelport.batching.handoff import Handoff
from modelport.batching.rows import concat, split
from modelport.errors import DeadlineExceeded, ModelportError, Overloaded
from modelport.signature import Batch

Infer = Callable[[Batch], Awaitable[Batch]]
Predict = Callable[[Batch], Batch]


@dataclass
class _Item:
    batch: Batch
    rows: int
    future: asyncio.Future[Batch]
    enqueued: float = field(default_factory=time.perf_counter)


# Queued by close(): everything before it is answered, then the loop ends.
_STOP: Any = object()


@dataclass
class BatchStats:
    """What the batcher has done; read by metrics and the benchmark."""

    batches: int = 0
    rows: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def record(self, rows: int) -> None:
        self.batches += 1
        self.rows += rows
        self.sizes[rows] = self.sizes.get(rows, 0) + 1


class AdaptiveBatcher:
    """Queue requests for one model version and run them in batches.

    `infer` is a coroutine function (run on the loop) or a plain function (run on
    `concurrency` lanes, threads of the batcher's own). `concurrency` batches may run
    at once (one per worker process, say). A failing batch fails each of its callers
    with the error; nobody is left waiting.
    """

    def __init__(self, infer: Infer | Predict, *, max_batch_size: int = 64,
                 max_delay_ms: float = 2.0, max_queue: int = 1024, concurrency: int = 1,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000
        self.max_queue = max_queue
        self.concurrency = concurrency
        self.on_batch = on_batch
        self.stats = BatchStats()
        # Created on start(), inside the running loop: an asyncio.Queue binds to the
        # loop that first uses it, and apps are built before their loop exists.
        self._queue: asyncio.Queue[_Item] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self._last_size = 1
        self._turn_seen = False  # a request was submitted in this turn of the loop
        self._idle = False  # the batch task waits for work
        self._next: _Item | None = None  # taken from the queue, waiting for a free slot
        self._carry: _Item | None = None
        self._threaded = not _is_coroutine_function(infer)
        self._lanes: list[threading.Thread] = []
        self._handoff = Handoff[_Item](max_queue)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def depth(self) -> int:
        if self._threaded:
            return len(self._handoff.items)
        return (self._queue.qsize() if self._queue else 0) + (self._next is not None)

    @property
    def full(self) -> bool:
        if self._threaded:
            return self._handoff.full
        return self.depth >= self.max_queue

    def full_message(self) -> str:
        return f"model queue is full ({self.max_queue} requests waiting); retry shortly"

    def start(self) -> None:
        if self._threaded:
            if not self._lanes:
                self._loop = self._handoff.loop = asyncio.get_running_loop()
                self._lanes = [threading.Thread(target=self._lane, daemon=True,
                                                name=f"batcher-lane-{n}")
                               for n in range(self.concurrency)]
                for lane in self._lanes:
                    lane.start()
            return
        if self._queue is None:
            self._queue = asyncio.Queue(self.max_queue)
            self._slots = asyncio.Semaphore(self.concurrency)
            self._loop_task = asyncio.create_task(self._run(), name="batcher")

    async def submit(self, batch: Batch, *, timeout: float | None = None) -> Batch:
        """Queue `batch` and wait for its outputs; 503 when the queue is full."""
        if self._closing:
            raise Overloaded("model is being unloaded; retry shortly", retry_after=1.0)
        self.start()
        loop = asyncio.get_running_loop()
        rows = len(next(iter(batch.values())))
        item = _Item(batch, rows, loop.create_future())
        if self._alone(loop):
            return await self._now(item)
        if self._threaded:
            if not self._handoff.put(item):
                raise Overloaded(self.full_message(), retry_after=1.0)
        else:
            assert self._queue is not None
            if self.full:
                raise Overloaded(self.full_message(), retry_after=1.0)
            self._queue.put_nowait(item)
        if timeout is None:
            return await item.future
        # A timer that fails the item's own future, rather than wait_for(shield(…)),
        # which adds a waiter, a second future and their callbacks to every request.
        # A caller that goes away cancels the future: the batch loop skips it.
        timer = loop.call_later(timeout, _expire, item.future, timeout)
        try:
            return await item.future
        finally:
            timer.cancel()

    def _alone(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a request for a model on the loop runs at once, in its caller's
        task: the last batch was a lone request, nothing waits or runs, and it is the
        first request this turn of the loop brings (the rest of the turn's queue up
        behind it, and batch). Saves the batch task's two hand-overs, a turn of the
        loop each: 5 % of a small model's server CPU at one caller (bench/README.md).
        No deadline timer: a model on the loop holds the loop for its whole call, so
        none could end the call sooner."""
        if self._threaded:
            return False
        first = not self._turn_seen
        if first:
            self._turn_seen = True
            loop.call_soon(self._new_turn)
        return first and self._idle and self._last_size <= 1 and self._queue is not None \
            and self._queue.empty() and self._slots is not None and not self._slots.locked()

    def _new_turn(self) -> None:
        self._turn_seen = False

    async def _now(self, item: _Item) -> Batch:
        assert self._slots is not None
        await self._slots.acquire()  # free: `_alone` saw it so, and nothing ran since
        await self._execute([item])
        return item.future.result()

    async def close(self, *, drain: bool = True) -> None:
        """Stop taking work; with `drain`, answer everything already accepted first."""
        self._closing = True
        if self._threaded:
            await self._close_lanes(drain=drain)
            return
        if self._queue is None or self._loop_task is None:
            return
        if drain:
            await self._queue.put(_STOP)  # behind every accepted request
            await self._loop_task
        else:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            waiting = [self._next] if self._next is not None else []
            self._next = None
            while not self._queue.empty():
                waiting.append(self._queue.get_nowait())
            for item in waiting:
                if item is not _STOP and not item.future.done():
                    item.future.set_exception(Overloaded("model was unloaded; retry"))
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._slots is not None:  # a lone request running in its caller's task too
            for _ in range(self.concurrency):
                await self._slots.acquire()

    async def _run(self) -> None:
        assert self._queue is not None
        assert self._slots is not None
        queue, slots = self._queue, self._slots
        stopping = False
        while not stopping:
            first, self._carry = self._carry, None
            if first is None:
                self._idle = True  # waiting for work, no batch running: see `_alone`
                first = await queue.get()
                self._idle = False
            if first is _STOP:
                return
            self._next = first  # still waiting, as the queue's requests are (`depth`)
            await slots.acquire()  # what comes meanwhile joins this batch
            self._next = None
            items, rows = [first], first.rows
            waited = False
            while rows < self.max_batch_size:
                if queue.empty():
                    if self._last_size <= 1 or self.max_delay <= 0 or waited:
                        break
                    # others were here last time: let the loop finish its turn (the
                    # requests it is taking in, the callers just answered coming back),
                    # once, as a lane does. Not a wait of max_delay: callers that wait
                    # for their answer would not come, and every batch would wait it out
                    waited = True
                    await asyncio.sleep(0)
                    continue
                nxt = queue.get_nowait()
                if nxt is _STOP:
                    stopping = True
                    break
                if rows + nxt.rows > self.max_batch_size:
                    self._carry = nxt  # it opens the next batch
                    break
                items.append(nxt)
                rows += nxt.rows
            items = [i for i in items if not i.future.done()]
            if not items:
                slots.release()
                continue
            self._last_size = len(items)
            task = asyncio.create_task(self._execute(items))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if self._carry is not None:  # drained: run the last carried request too
            await slots.acquire()
            carried, self._carry = self._carry, None
            task = asyncio.create_task(self._execute([carried]))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _close_lanes(self, *, drain: bool) -> None:
        if not drain:  # fail what waits; batches already running still answer
            while (item := self._handoff.get_nowait()) is not None:
                self._fail(item, Overloaded("model was unloaded; retry"))
        for _ in self._lanes:  # one each, behind every accepted request
            self._handoff.put(_STOP, always=True)
        for lane in self._lanes:
            await asyncio.to_thread(lane.join)

    def _lane(self) -> None:
        """A lane's life: form a batch from the queue, run it, hand the answers to the
        loop, and take the next batch at once; ends at its `_STOP`."""
        carry: _Item | None = None
        stopping = False
        while not stopping:
            first = carry or self._handoff.get()
            carry = None
            if first is _STOP:
                return
            items, rows = [first], first.rows
            if rows < self.max_batch_size and self._last_size > 1 and self.max_delay > 0:
                self._await_loop_turn()
            while rows < self.max_batch_size:
                nxt = self._handoff.get_nowait()
                if nxt is None:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                if rows + nxt.rows > self.max_batch_size:
                    carry = nxt  # it opens the next batch
                    break
                items.append(nxt)
                rows += nxt.rows
            # a caller gone or past its deadline is skipped (its future is done)
            items = [i for i in items if not i.future.done()]
            if items:
                self._last_size = len(items)
                self._run_in_lane(items)
            if stopping and carry is not None:  # drained: the carried request too
                self._run_in_lane([carry])

    def _await_loop_turn(self) -> None:
        """Others were here last time: let the event loop finish taking in the requests
        that have arrived (the rest of its turn) before the batch closes, for at most
        `max_delay`. One wake-up, not one per arrival: waiting on the queue instead
        would wake this thread, and take the GIL from the loop, for every request."""
        assert self._loop is not None
        turned = threading.Event()
        try:
            self._loop.call_soon_threadsafe(turned.set)
        except RuntimeError:  # the loop is gone
            return
        turned.wait(self.max_delay)

    def _run_in_lane(self, items: list[_Item]) -> None:
        started = time.perf_counter()
        predict: Predict = self.infer  # type: ignore[assignment]
        try:
            merged = concat([i.batch for i in items]) if len(items) > 1 else items[0].batch
            parts: list[Batch] | BaseException = split(predict(merged),
                                                        [i.rows for i in items])
        except Exception as exc:
            parts = _batch_error(exc, items)
        self._hand_back(items, parts)
        rows = sum(i.rows for i in items)
        self.stats.record(rows)
        if self.on_batch is not None:
            self.on_batch(rows, time.perf_counter() - started)

    def _hand_back(self, items: list[_Item], parts: list[Batch] | BaseException) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            self._loop.call_soon_threadsafe(_deliver, items, parts)

    def _fail(self, item: _Item, error: BaseException) -> None:
        if item is not _STOP:
            self._hand_back([item], error)

    async def _execute(self, items: list[_Item]) -> None:
        assert self._slots is not None
        started = time.perf_counter()
        try:
            merged = concat([i.batch for i in items]) if len(items) > 1 else items[0].batch
            infer: Infer = self.infer  # type: ignore[assignment]
            parts: list[Batch] | BaseException = split(await infer(merged),
                                                        [i.rows for i in items])
        except Exception as exc:
            parts = _batch_error(exc, items)
        finally:
            self._slots.release()
        _deliver(items, parts)
        rows = sum(i.rows for i in items)
        self.stats.record(rows)
        if self.on_batch is not None:
            self.on_batch(rows, time.perf_counter() - started)


def _is_coroutine_function(fn: object) -> bool:
    # an object with `async def __call__` counts too (inspect looks at functions only)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004


def _batch_error(exc: Exception, items: list[_Item]) -> ModelportError:
    return exc if isinstance(exc, ModelportError) else ModelportError(
        f"model failed on a batch of {sum(i.rows for i in items)} rows: {exc}")


def _deliver(items: list[_Item], parts: list[Batch] | BaseException) -> None:
    """Answer each caller still waiting (on the loop); a failure fans out to all."""
    for n, item in enumerate(items):
        if item.future.done():
            continue
        if isinstance(parts, BaseException):
            item.future.set_exception(parts)
        else:
            item.future.set_result(parts[n])


def _expire(future: asyncio.Future[Batch], timeout: float) -> None:
    if not future.done():  # the batch loop skips it if it has not run yet
        future.set_exception(DeadlineExceeded(f"no prediction within {timeout:g}s"))


__all__ = ["AdaptiveBatcher", "BatchStats", "Infer", "Predict"]
