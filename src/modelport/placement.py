"""Where a served model runs: on the event loop, in a thread, or in worker processes.

A model entry's `on_loop` and `workers` decide it (see `ModelConfig`). With neither
set (`on_loop: auto`, the default), the load times the model on its signature's
sample rows, at one row and at the largest batch the batcher forms, and:

- runs it on the event loop when the larger of the two calls takes under
  `LOOP_MAX_S` (1 ms): the thread's hand-over and wake-up, saved there, cost a
  scikit-learn model of ~400 µs 6-26 % of a request's server CPU at 8 and 64
  concurrent callers (bench/README.md, "Placement"), and the loop is held no longer
  than a request's own parsing and answer take;
- runs it in a thread otherwise, when there are no sample rows to time it on, and
  always for the python flavor (a user's class may wait on a database or a service,
  and a call fast at load may not be fast later: on the loop such a wait would stall
  every request): the loop keeps answering while the model computes, and numpy,
  onnxruntime and the tree libraries release the GIL while they do.

Worker processes are never chosen: they cost a copy of the model per process and
spawn-time start-up, and whether a slow model holds the GIL (where they pay) or
releases it (where a thread is as fast) is not visible from its timing. `workers: N`
asks for them. The choice is made once, at load, and holds for the version's life:
a model that moved between the loop and a thread under load would be hard to reason
about, and the batch at `max_batch_size` is already the one load forms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np

from modelport.model import Model
from modelport.signature import Batch

Where = Literal["loop", "thread", "process"]

LOOP_MAX_S = 0.001
"""The slowest call (at one row and at `max_batch_size`) that still runs on the loop."""
TIMED_CALLS = 5
TIMING_BUDGET_S = 0.05
"""Timed calls per batch size: up to 5 after a warm-up, within 50 ms; a call of 10 ms
or more is not repeated, and a warm-up of 100 ms or more is the timing (a slow model
must not double its load time to learn that it is slow)."""

_NAMES = {"loop": "on the event loop", "thread": "in a thread", "process": "in worker processes"}


@dataclass(frozen=True)
class Placement:
    """Where one loaded version runs, why, and what its calls took at load."""

    where: Where
    reason: str
    """`auto` (chosen from `timings`) or the setting that fixed it."""
    timings: dict[int, float] = field(default_factory=dict)
    """Seconds a call took at load, by rows in the batch (the fastest of the calls)."""

    def describe(self) -> str:
        """`runs on the event loop (auto: 18 µs a call at batch 1, 40 µs at 64)`."""
        calls = ", ".join(f"{_us(s)} at {rows}" if n else f"{_us(s)} a call at batch {rows}"
                          for n, (rows, s) in enumerate(self.timings.items()))
        return f"runs {_NAMES[self.where]} ({self.reason}{': ' + calls if calls else ''})"

    def as_json(self) -> dict[str, Any]:
        return {"where": self.where, "reason": self.reason,
                "us_per_call": {str(rows): round(s * 1e6, 1)
                                for rows, s in self.timings.items()}}


def configured(on_loop: bool | Literal["auto"], workers: int) -> Placement | None:
    """The placement the settings fix, or None for `auto` (time the model)."""
    if workers:
        return Placement("process", f"workers: {workers}")
    if on_loop == "auto":
        return None
    return Placement("loop" if on_loop else "thread", f"on_loop: {str(on_loop).lower()}")


def choose(model: Model, max_batch_size: int) -> Placement:
    """Time `model` on its signature's sample at 1 and `max_batch_size` rows, and
    place it by the rule above. Runs the model: call it off the event loop.

    A failure at one row is raised (the model fails its smoke test); a failure only
    at `max_batch_size` rows places it in a thread, where such a batch fails its
    callers without holding the loop."""
    if not model.flavor.computes_only:
        return Placement("thread", f"auto: {model.record.flavor}-flavor code may wait "
                                   "on I/O")
    if not model.signature.sample:
        return Placement("thread", "auto: no sample rows to time it on")
    sample = model.signature.sample_batch()
    timings = {1: fastest(partial(model.predict_batch, rows_of(sample, 1)))}
    if timings[1] < LOOP_MAX_S and max_batch_size > 1:
        try:
            timings[max_batch_size] = fastest(
                partial(model.predict_batch, rows_of(sample, max_batch_size)))
        except Exception as exc:  # the smoke test and live batches say what is wrong
            return Placement("thread", f"auto: a call at {max_batch_size} rows failed "
                                       f"({type(exc).__name__})", timings)
    where: Where = "loop" if max(timings.values()) < LOOP_MAX_S else "thread"
    return Placement(where, "auto", timings)


def rows_of(batch: Batch, rows: int) -> Batch:
    """`batch`'s rows repeated (or cut) to `rows`, every input alike."""
    return {k: np.take(v, np.arange(rows) % len(v), axis=0) for k, v in batch.items()}


def fastest(call: Callable[[], object]) -> float:
    """The fastest of a few timed calls after a warm-up, in seconds: the model's own
    cost, as free as can be of what else the machine runs at load."""
    started = time.perf_counter()
    call()  # the first calls pay for lazy set-up (caches, thread pools)
    warm_up = time.perf_counter() - started
    if warm_up >= 100 * LOOP_MAX_S:
        return warm_up
    best, spent = float("inf"), 0.0
    for _ in range(TIMED_CALLS):
        started = time.perf_counter()
        call()
        took = time.perf_counter() - started
        best, spent = min(best, took), spent + took
        if took >= 10 * LOOP_MAX_S or spent >= TIMING_BUDGET_S:
            break
    return best


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs" if seconds < 0.01 else f"{seconds * 1e3:,.1f} ms"
