"""Traffic policies of a served model: a shadow that sees the requests, a canary that
answers some of them.

```yaml
models:
  - ref: iris@production
    shadow: {ref: iris@staging, fraction: 0.5}       # or just `shadow: iris@staging`
    canary: {ref: iris@candidate, weight: 10, key: "header:x-user-id"}
```

- **Shadow**: a share (`fraction`) of the primary's calls is also scored by the shadow,
  after the primary has answered and off the caller's path: the call is put on a
  bounded queue that a few background tasks work through. A full queue drops the call
  (counted, logged) instead of waiting, and a shadow that raises, times out or is slow
  only shows in its own counters. Both answers go to the prediction log with the same
  request id and rows; how often they agree is counted per row (`agreement`).
- **Canary**: `weight` percent of the calls are answered by the candidate instead.
  With a `key` (`header:NAME` or `field:NAME`) a caller lands on the same side every
  time (a hash of the key's value); without one, or when a call has no value for it,
  calls are split by a running credit, so the share is exact.

The data plane loads the policies' models beside the served ones and follows their
aliases the same way; `DataPlane.answer` applies the policy, for every trigger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelport.errors import DeadlineExceeded, ModelportError
from modelport.model import Model
from modelport.monitoring.agreement import agreement
from modelport.monitoring.metrics import Metrics
from modelport.registry import parse_ref
from modelport.signature import Batch

log = logging.getLogger("modelport.traffic")

QUEUE_SIZE = 1000
"""Shadow calls waiting; beyond this they are dropped rather than pile up."""
SHADOW_TASKS = 4
"""Shadow calls in flight at once (the shadow's batcher groups them)."""
BUCKETS = 10_000
"""A keyed canary splits callers into this many buckets: weights to 0.01 %."""
DROP_LOG_EVERY_S = 10.0


def _ref(value: str) -> str:
    try:
        parse_ref(value)
    except ModelportError as exc:  # pydantic reports a ValueError as the field's error
        raise ValueError(exc.message) from None
    return value


class ShadowPolicy(BaseModel):
    """`shadow:` of a served model: `NAME@ALIAS` (or `NAME:VERSION`), or a mapping."""

    model_config = ConfigDict(extra="forbid")

    ref: str
    fraction: float = Field(1.0, gt=0, le=1)
    """Share of the primary's calls also sent to the shadow."""
    tolerance: float = Field(1e-6, ge=0)
    """Numeric answers within this (absolute or relative) difference agree."""
    timeout_s: float = Field(5.0, gt=0)
    """A shadow call taking longer is counted as a timeout."""

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        return {"ref": value} if isinstance(value, str) else value

    _check_ref = field_validator("ref")(_ref)


class CanaryPolicy(BaseModel):
    """`canary:` of a served model: `{ref: NAME@ALIAS, weight: PERCENT, key: …}`."""

    model_config = ConfigDict(extra="forbid")

    ref: str
    weight: float = Field(gt=0, le=100)
    """Percent of the calls the candidate answers."""
    key: str | None = None
    """`header:NAME` or `field:NAME`: the same value always gets the same answerer."""

    _check_ref = field_validator("ref")(_ref)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None:
            kind, _, name = value.partition(":")
            if kind not in ("header", "field") or not name:
                raise ValueError(f"key {value!r}: expected 'header:NAME' or 'field:NAME'")
        return value

    def key_of(self, batch: Batch, headers: Mapping[str, str] | None) -> str | None:
        """The call's value of the key (a batch: its first row's), or None."""
        if self.key is None:
            return None
        kind, _, name = self.key.partition(":")
        if kind == "header":
            return headers.get(name) if headers is not None else None
        values = batch.get(name)
        if values is None or not values.ndim or not len(values):
            return None
        return str(values[0].item() if isinstance(values[0], np.generic) else values[0])


class TrafficPolicy(BaseModel):
    """A served model's shadow and canary, each optional."""

    model_config = ConfigDict(extra="forbid")

    shadow: ShadowPolicy | None = None
    canary: CanaryPolicy | None = None

    @property
    def refs(self) -> list[str]:
        return [p.ref for p in (self.shadow, self.canary) if p is not None]


class Target(Protocol):
    """What a policy needs of a loaded model (a `dataplane.Deployment`)."""

    model: Model

    @property
    def version(self) -> int: ...

    async def submit(self, batch: Batch, asked: frozenset[str] | None = None, *,
                     timeout: float | None = None) -> Batch: ...


class Splitter:
    """Chooses, call by call, whether the canary answers."""

    def __init__(self) -> None:
        self._credit = 0.0

    def to_canary(self, policy: CanaryPolicy, key: str | None) -> bool:
        if key is not None:
            return bucket(key) < policy.weight * BUCKETS / 100
        # a running credit: exactly `weight` of every 100 keyless calls, evenly spread
        self._credit += policy.weight
        if self._credit >= 100:
            self._credit -= 100
            return True
        return False


def bucket(key: str) -> int:
    """A stable bucket for a key: the same in every replica and every restart."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class ShadowLog(Protocol):
    """Where a shadow's answers are recorded (a `PredictionLog`)."""

    def record(self, model: str, version: int, source: str, inputs: Batch,
               outputs: Batch | None, latency_ms: float, request_id: str | None = None,
               rows: np.ndarray | None = None) -> np.ndarray | None: ...


@dataclass
class ShadowCall:
    served: str
    policy: ShadowPolicy
    target: Target
    inputs: Batch
    primary: Batch
    source: str
    request_id: str | None
    rows: np.ndarray | None
    """The rows the prediction log kept of the primary's answer: the shadow's same."""


class ShadowRunner:
    """The shadows' background work: a bounded queue and a few tasks emptying it."""

    def __init__(self, metrics: Metrics, plog: ShadowLog | None = None, *,
                 queue_size: int = QUEUE_SIZE, tasks: int = SHADOW_TASKS) -> None:
        self.metrics = metrics
        self.plog = plog
        self.queue_size, self.tasks = queue_size, tasks
        # created in start(): a queue belongs to the loop it is used on
        self._queue: asyncio.Queue[ShadowCall] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._rng = random.Random(0)
        self._dropped_since_log = 0
        self._last_drop_log = 0.0
        # agreed and compared rows since start, per (served, shadow): the gauge's ratio
        self._agreed: dict[tuple[str, str], tuple[float, int]] = {}

    def start(self) -> None:
        if self._queue is not None:
            return
        self._queue = asyncio.Queue(self.queue_size)
        self._workers = [asyncio.create_task(self._work(), name=f"shadow-{i}")
                         for i in range(self.tasks)]

    async def stop(self) -> None:
        """Stop at once: calls still queued are dropped, never waited for."""
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers, self._queue = [], None

    def offer(self, call: ShadowCall) -> None:
        """Queue a shadow call, or drop it (counted) when the queue is full; never waits."""
        if self._queue is None or not self.sampled(call.policy):
            return
        try:
            self._queue.put_nowait(call)
        except asyncio.QueueFull:
            self.count(call, "dropped")
            self._dropped_since_log += 1
            now = time.monotonic()
            if now - self._last_drop_log >= DROP_LOG_EVERY_S:
                log.warning("shadow queue full (%d waiting): %d shadow calls dropped",
                            self.queue_size, self._dropped_since_log)
                self._last_drop_log, self._dropped_since_log = now, 0

    def sampled(self, policy: ShadowPolicy) -> bool:
        """Whether this call is one of the `fraction` the shadow scores."""
        return policy.fraction >= 1 or self._rng.random() < policy.fraction

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def _work(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            call = await queue.get()
            try:
                await self.run(call)
            except Exception:  # a bug here must not end the task
                log.exception("shadow call of %s failed", call.served)
            finally:
                queue.task_done()

    async def run(self, call: ShadowCall) -> None:
        """Score one call with the shadow, compare, count and log it."""
        await self.score(call)

    async def score(self, call: ShadowCall) -> tuple[Batch | None, str]:
        """`run`, answering with the shadow's outputs, or None and why it failed (a
        pipeline's `shadow_writer` stores the outputs)."""
        record = call.target.model.record
        started = time.perf_counter()
        outputs: Batch | None = None
        reason = ""
        try:
            outputs = await call.target.submit(call.inputs, timeout=call.policy.timeout_s)
        except DeadlineExceeded:  # the batcher's own timer
            self.count(call, "timeout")
            reason = f"no answer within timeout_s={call.policy.timeout_s:g}"
        except Exception as exc:
            self.count(call, "error")
            reason = exc.message if isinstance(exc, ModelportError) else \
                f"{type(exc).__name__}: {exc}"
            log.debug("shadow %s failed: %s", call.policy.ref, reason)
        if self.plog is not None:
            self.plog.record(record.name, record.version, f"shadow:{call.source}",
                             call.inputs, outputs, (time.perf_counter() - started) * 1000,
                             call.request_id, rows=call.rows)
        if outputs is None:
            return None, reason
        self.count(call, "compared")
        agreed, rows = agreement(call.primary, outputs, call.policy.tolerance)
        labels = (call.served, call.policy.ref)
        self.metrics.shadow_rows.labels(*labels).inc(rows)
        self.metrics.shadow_agreed.labels(*labels).inc(agreed)
        before_agreed, before = self._agreed.get(labels, (0.0, 0))
        total_agreed, total = self._agreed[labels] = before_agreed + agreed, before + rows
        self.metrics.shadow_agreement.labels(*labels).set(total_agreed / total if total else 1)
        return outputs, ""

    def count(self, call: ShadowCall, outcome: str) -> None:
        """Count a shadow call's outcome (a pipeline's `shadow_writer` counts its own
        `dropped` and `unwritten`)."""
        self.metrics.shadow_calls.labels(call.served, call.policy.ref, outcome).inc()
