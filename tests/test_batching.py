"""The adaptive batcher: coalescing, fan-out of failures, overload and deadlines."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from modelport.batching import AdaptiveBatcher
from modelport.batching.handoff import Handoff
from modelport.errors import DeadlineExceeded, ModelportError, Overloaded
from modelport.signature import Batch
from waiting import until


def rows(*values: float) -> Batch:
    return {"x": np.asarray(values, dtype=np.float64)}


class SlowDouble:
    """A model that takes `delay` seconds per call and records the batch sizes."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.calls: list[int] = []

    async def __call__(self, batch: Batch) -> Batch:
        self.calls.append(len(batch["x"]))
        await asyncio.sleep(self.delay)
        return {"y": batch["x"] * 2}


class HeldDouble:
    """A coroutine model that holds each call until the test opens `gate`: the test
    knows the model is busy (`entered`) without guessing how long anything takes."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls: list[list[float]] = []
        """The rows of each call."""

    async def __call__(self, batch: Batch) -> Batch:
        self.calls.append(batch["x"].tolist())
        self.entered.set()
        await self.gate.wait()
        return {"y": batch["x"] * 2}


async def test_concurrent_requests_coalesce_and_each_gets_its_own_rows() -> None:
    model = SlowDouble()
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_delay_ms=0)
    results = await asyncio.gather(*(batcher.submit(rows(i, i + 0.5)) for i in range(20)))
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], [2 * i, 2 * i + 1])
    assert len(model.calls) < 20  # they arrived together: far fewer model calls
    assert sum(model.calls) == 40
    await batcher.close()


async def test_batches_never_exceed_max_batch_size() -> None:
    model = SlowDouble()
    batcher = AdaptiveBatcher(model, max_batch_size=8, max_delay_ms=0)
    await asyncio.gather(*(batcher.submit(rows(i)) for i in range(50)))
    assert max(model.calls) <= 8
    assert sum(model.calls) == 50
    await batcher.close()


async def test_idle_model_runs_a_lone_request_without_waiting() -> None:
    model = SlowDouble(delay=0)
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_delay_ms=500)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(5):
        await batcher.submit(rows(i))
    # five sequential requests; a fixed 500 ms window would take 2.5 s
    assert loop.time() - started < 0.4
    assert model.calls == [1, 1, 1, 1, 1]
    await batcher.close()


async def test_a_lone_caller_runs_in_its_own_task_and_a_burst_still_batches() -> None:
    """On the loop, a request to a free model that is alone runs at once in its
    caller's task, with no batch task in between; requests that come while it runs
    queue and go together, and after such a batch the next turn's requests queue too."""
    tasks: list[asyncio.Task[object] | None] = []

    async def double(batch: Batch) -> Batch:
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0)  # a model call the others can arrive during
        return {"y": batch["x"] * 2}

    batcher = AdaptiveBatcher(double, max_batch_size=64, max_delay_ms=0)
    loop = asyncio.get_running_loop()

    async def alone(i: int) -> tuple[object, list[float]]:
        return asyncio.current_task(), (await batcher.submit(rows(i)))["y"].tolist()

    await batcher.submit(rows(0))  # started: its batch task waits for work
    for i in range(3):  # sequential callers: each in a turn of its own
        me, answer = await loop.create_task(alone(i))
        assert answer == [2.0 * i] and tasks[-1] is me
    burst = await asyncio.gather(*(alone(i) for i in range(10)))
    assert [answer for _, answer in burst] == [[2.0 * i] for i in range(10)]
    assert tasks[4] is burst[0][0]  # the first of the burst ran at once ...
    assert len(tasks) == 6  # ... and the other nine together, in the batch task
    assert all(tasks[5] is not me for me, _ in burst)
    await asyncio.gather(*(alone(i) for i in range(10)))  # company seen: all queue
    assert len(tasks) == 7
    await batcher.close()


async def test_a_failing_batch_fails_every_caller_and_the_batcher_keeps_serving() -> None:
    calls = 0

    async def flaky(batch: Batch) -> Batch:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return {"y": batch["x"]}

    batcher = AdaptiveBatcher(flaky, max_batch_size=64, max_delay_ms=0)
    outcomes = await asyncio.gather(*(batcher.submit(rows(i)) for i in range(10)),
                                    return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, Exception)]
    assert failures, "the failing batches must reach their callers"
    assert all(isinstance(f, ModelportError) and "boom" in str(f) for f in failures)
    assert (await batcher.submit(rows(7)))["y"].tolist() == [7.0]
    await batcher.close()


async def test_full_queue_is_refused_fast_with_retry_after() -> None:
    model = HeldDouble()
    batcher = AdaptiveBatcher(model, max_batch_size=1, max_delay_ms=0, max_queue=2)
    first = asyncio.ensure_future(batcher.submit(rows(0)))
    await model.entered.wait()  # the model is busy with the first request
    queued = [asyncio.ensure_future(batcher.submit(rows(i))) for i in (1, 2)]
    await until(lambda: batcher.full, what="the two requests queued")
    with pytest.raises(Overloaded) as info:
        await batcher.submit(rows(3))
    assert info.value.status_code == 503 and info.value.retry_after >= 1
    model.gate.set()
    await asyncio.gather(first, *queued)  # what was accepted is still answered
    assert model.calls == [[0.0], [1.0], [2.0]]
    await batcher.close()


async def test_request_past_its_deadline_gets_504_and_is_skipped() -> None:
    model = HeldDouble()
    batcher = AdaptiveBatcher(model, max_batch_size=1, max_delay_ms=0)
    busy = asyncio.ensure_future(batcher.submit(rows(0)))
    await model.entered.wait()
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(rows(1), timeout=0.05)
    model.gate.set()
    await busy
    await batcher.submit(rows(2))  # queued behind the abandoned one: answered after it
    assert model.calls == [[0.0], [2.0]]  # the abandoned request never reached the model
    await batcher.close()


async def test_a_caller_that_goes_away_is_skipped() -> None:
    model = HeldDouble()
    batcher = AdaptiveBatcher(model, max_batch_size=1, max_delay_ms=0)
    busy = asyncio.ensure_future(batcher.submit(rows(0)))
    await model.entered.wait()  # the model is busy with the first request
    gone = asyncio.ensure_future(batcher.submit(rows(1), timeout=5))
    await until(lambda: batcher.depth == 1, what="the second request queued")
    gone.cancel()  # say, the client disconnected
    model.gate.set()
    await busy
    await batcher.submit(rows(2))
    assert gone.cancelled()
    assert model.calls == [[0.0], [2.0]]  # the cancelled request never reached the model
    await batcher.close()


async def test_close_drains_queued_requests() -> None:
    model = HeldDouble()
    batcher = AdaptiveBatcher(model, max_batch_size=2, max_delay_ms=0)
    pending = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(6)]
    await model.entered.wait()
    await until(lambda: batcher.depth == 4, what="two rows in the model, four queued")
    closing = asyncio.create_task(batcher.close(drain=True))
    await until(lambda: batcher.depth == 5, what="close() queued behind the requests")
    model.gate.set()
    await closing
    assert [p.result()["y"].tolist() for p in pending] == [[2.0 * i] for i in range(6)]
    assert model.calls == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


async def test_waiting_for_company_is_bounded_by_max_delay_in_all() -> None:
    model = SlowDouble(delay=0.01)
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_delay_ms=100)
    await asyncio.gather(*(batcher.submit(rows(i)) for i in range(3)))  # concurrency seen
    loop = asyncio.get_running_loop()

    later: list[asyncio.Task[Batch]] = []

    async def trickle() -> None:  # a request every 40 ms: each within max_delay of the last
        for i in range(8):
            await asyncio.sleep(0.04)
            later.append(asyncio.create_task(batcher.submit(rows(i))))

    started = loop.time()
    first = asyncio.create_task(batcher.submit(rows(99)))
    trickling = asyncio.create_task(trickle())
    await first
    # the first request waited max_delay for company, not 40 ms more after each arrival
    assert loop.time() - started < 0.25
    await trickling
    await asyncio.gather(*later)
    await batcher.close()


async def test_a_closed_loop_of_callers_on_the_loop_does_not_wait_out_max_delay() -> None:
    """Callers that ask again only once answered: after a batch with company, the batch
    task waits for the rest of the loop's turn (in which the answered callers come
    back), as a lane does, not `max_delay` for company that cannot come."""
    model = SlowDouble(delay=0)
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_delay_ms=10_000)

    async def caller(i: int) -> None:
        for _ in range(5):
            assert (await batcher.submit(rows(i)))["y"].tolist() == [2.0 * i]

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(8)))
    assert time.perf_counter() - started < 5  # not 10 s for each batch after the first
    assert model.calls.count(8) >= 3, model.calls  # one cohort, after the first two
    await batcher.close()


# --- a model given as a plain function runs on the batcher's own threads (lanes) ---


class GatedDouble:
    """A plain-function model: each call waits for the gate (if closed) and records
    the batch sizes and which thread ran it."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, batch: Batch) -> Batch:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self.calls.append(len(batch["x"]))
        return {"y": batch["x"] * 2}


async def test_a_plain_function_runs_on_lanes_and_each_caller_gets_its_own_rows() -> None:
    model = GatedDouble()
    model.gate.clear()
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_delay_ms=0)
    first = asyncio.ensure_future(batcher.submit(rows(-1)))
    await asyncio.to_thread(model.entered.wait, 30)  # the lane holds the first request
    rest = [asyncio.ensure_future(batcher.submit(rows(i, i + 0.5))) for i in range(20)]
    model.gate.set()
    results = await asyncio.gather(*rest)
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], [2 * i, 2 * i + 1])
    assert (await first)["y"].tolist() == [-2.0]
    assert model.calls == [1, 40]  # the twenty queued behind the first made one batch
    assert model.threads == {"batcher-lane-0"}
    await batcher.close()


async def test_lanes_run_queued_batches_while_the_event_loop_is_busy() -> None:
    """The point of lanes: the model takes the next batch without a loop turn, so a
    loop busy with other work (refusing an overload, say) does not leave it idle."""
    model = GatedDouble()
    model.gate.clear()
    batcher = AdaptiveBatcher(model, max_batch_size=1, max_delay_ms=0, max_queue=8)
    pending = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(6)]
    await asyncio.to_thread(model.entered.wait, 30)  # one running, five queued
    model.gate.set()
    deadline = time.monotonic() + 30
    while len(model.calls) < 6 and time.monotonic() < deadline:  # the loop never yields
        threading.Event().wait(0.001)
    assert model.calls == [1] * 6
    assert [(await p)["y"].tolist() for p in pending] == [[2.0 * i] for i in range(6)]
    await batcher.close()


class SleepyDouble:
    """A plain-function model that takes `delay` seconds a call (the GIL released, as
    numerical code does) and records the batch sizes."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: list[int] = []

    def __call__(self, batch: Batch) -> Batch:
        self.calls.append(len(batch["x"]))
        time.sleep(self.delay)
        return {"y": batch["x"] * 2}


async def test_a_closed_loop_of_callers_is_batched_as_one_cohort() -> None:
    """Callers that send their next request as soon as they are answered: after a
    batch with company the lane lets the event loop finish its turn, in which the
    answered callers come back, so they do not split into cohorts that alternate in
    half-size batches (each batch pays the model's fixed cost)."""
    model = SleepyDouble(0.02)
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_delay_ms=2)
    callers = 16

    async def caller(i: int) -> None:
        for _ in range(8):
            assert (await batcher.submit(rows(i)))["y"].tolist() == [2.0 * i]

    await asyncio.gather(*(caller(i) for i in range(callers)))
    await batcher.close()
    # the first caller finds the model idle and runs alone, the rest queue behind it;
    # from then on, one batch of everybody
    settled = model.calls[3:]
    assert sorted(settled)[len(settled) // 2] == callers, model.calls


async def test_waiting_for_callers_that_do_not_come_back_ends_early() -> None:
    """An open stream of callers: the ones answered are gone. The wait for company
    after a batch is `max_delay` at most, not as long as a model call."""
    model = SleepyDouble(0.3)
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_delay_ms=2)
    await asyncio.gather(*(batcher.submit(rows(i)) for i in range(8)))  # 1, then 7
    started = time.perf_counter()
    assert (await batcher.submit(rows(1)))["y"].tolist() == [2.0]
    assert time.perf_counter() - started < 0.3 + 0.25  # the call, and no 0.3 s wait
    await batcher.close()


async def test_a_lane_refuses_past_its_queue_and_fans_failures_out() -> None:
    model = GatedDouble()
    model.gate.clear()
    batcher = AdaptiveBatcher(model, max_batch_size=1, max_delay_ms=0, max_queue=2)
    first = asyncio.ensure_future(batcher.submit(rows(0)))
    await asyncio.to_thread(model.entered.wait, 30)
    queued = [asyncio.ensure_future(batcher.submit(rows(i))) for i in (1, 2)]
    await until(lambda: batcher.full, what="both in the queue")
    with pytest.raises(Overloaded):
        await batcher.submit(rows(3))
    model.gate.set()
    assert [(await p)["y"].tolist() for p in (first, *queued)] == [[0.0], [2.0], [4.0]]

    def broken(batch: Batch) -> Batch:
        raise ValueError("no good")

    failing = AdaptiveBatcher(broken, max_batch_size=8, max_delay_ms=0)
    for outcome in await asyncio.gather(*(failing.submit(rows(i)) for i in range(3)),
                                        return_exceptions=True):
        assert isinstance(outcome, ModelportError) and "no good" in str(outcome)
    await asyncio.gather(batcher.close(), failing.close())


async def test_closing_lanes_drains_or_refuses_what_waits() -> None:
    model = GatedDouble()
    batcher = AdaptiveBatcher(model, max_batch_size=2, max_delay_ms=0)
    pending = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(6)]
    await asyncio.sleep(0)
    await batcher.close(drain=True)
    assert [p.result()["y"].tolist() for p in pending] == [[2.0 * i] for i in range(6)]
    with pytest.raises(Overloaded):
        await batcher.submit(rows(7))

    model = GatedDouble()
    model.gate.clear()
    batcher = AdaptiveBatcher(model, max_batch_size=1, max_delay_ms=0)
    running = asyncio.ensure_future(batcher.submit(rows(0)))
    await asyncio.to_thread(model.entered.wait, 30)
    waiting = asyncio.ensure_future(batcher.submit(rows(1)))
    await until(lambda: batcher.depth == 1, what="the second request queued")
    closing = asyncio.ensure_future(batcher.close(drain=False))
    with pytest.raises(Overloaded):
        await waiting  # refused, not run
    model.gate.set()
    assert (await running)["y"].tolist() == [0.0]  # what was running still answers
    await closing
    assert model.calls == [1]


async def test_a_sleeping_lane_wakes_once_at_the_end_of_the_loop_turn() -> None:
    """Requests admitted in one event-loop turn wake a sleeping lane once, when the
    turn ends: a thread woken per request would take the core from the loop mid-turn
    (an OS context switch per request), and take one request at a time."""
    handoff: Handoff[int] = Handoff(capacity=100)
    handoff.loop = asyncio.get_running_loop()
    taken: list[int] = []
    asleep = threading.Event()

    def lane() -> None:
        asleep.set()
        while (item := handoff.get()) >= 0:
            taken.append(item)

    thread = threading.Thread(target=lane)
    thread.start()
    await asyncio.to_thread(asleep.wait)
    await until(lambda: handoff.sleeping == 1, what="the lane asleep")
    for i in range(10):  # one turn: no await in between
        assert handoff.put(i)
        time.sleep(0.001)  # the GIL is free: a lane woken by put() would run now
    assert taken == [] and len(handoff.items) == 10
    await until(lambda: len(taken) == 10, what="the lane took the turn's requests")
    assert taken == list(range(10))
    assert not Handoff(capacity=1).full
    handoff.put(-1, always=True)
    await asyncio.to_thread(thread.join)
