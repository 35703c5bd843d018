"""The prediction log: what was predicted, sampled, written off the hot path.

`DataPlane.predict` (where every trigger passes) calls `record` after each model call.
`record` does constant work on the event loop and never waits: it counts the call in
a per-minute traffic tally, draws which rows to keep (each with probability
`sample_rate`, at most `max_rows_per_call`), and appends a reference to the call's
arrays to a bounded buffer. When the buffer is full, samples are dropped and counted
(`modelport_predlog_rows_total{outcome="dropped"}`) instead of slowing requests.

A background task (started and stopped with the data plane) wakes every
`flush_interval_s`, or when the buffer is a quarter full, and writes what accumulated
in one transaction from a worker thread: the rows turned into JSON (executemany) and
the traffic tallies added to `mp_traffic`. When the write fails the samples are lost
(and counted as failed), but the tallies are kept for the next flush, so traffic
counts stay exact across a database outage. `stop` writes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from modelport.datatypes import jsonable
from modelport.monitoring.logstore import Count, LogStore, TrafficKey
from modelport.monitoring.metrics import Metrics
from modelport.settings import MonitoringSettings, Settings
from modelport.signature import Batch

log = logging.getLogger("modelport.predlog")

MAX_VALUES_PER_ROW = 256
"""A row's input or output with more values than this (an image, an embedding) is
stored as its shape and datatype only: the log is for tabular drift, not a data lake."""


_FIRST = np.zeros(1, dtype=np.intp)

Picked = dict[str, np.ndarray | dict[str, Any]]
"""Sampled rows by field; a field too large to log is its shape and datatype instead."""


@dataclass
class Call:
    """A model call with some rows sampled, waiting for the flusher."""

    ts: float
    model: str
    version: int
    source: str
    latency_ms: float
    request_id: str | None
    inputs: Picked  # the sampled rows only
    outputs: Picked
    size: int
    rows: np.ndarray  # the sampled rows' indices in the call (feedback joins on them)
    keys: list[str] | None  # their pipeline keys, as text (feedback joins on them too)


class PredictionLog:
    """Sample and count predictions; write them in the background.

    >>> plog = PredictionLog.from_settings(settings)   # None when monitoring is off
    >>> DataPlane(registry, settings, models, prediction_log=plog)
    """

    def __init__(self, store: LogStore, config: MonitoringSettings | None = None) -> None:
        self.store = store
        self.config = config or MonitoringSettings()
        self.metrics = Metrics()  # replaced by the data plane's on start
        self.rng = np.random.default_rng(self.config.seed)
        self.clock: Callable[[], float] = time.time  # tests move it between minutes
        self._calls: deque[Call] = deque()
        self._buffered = 0  # sampled rows in _calls
        self._counts: dict[TrafficKey, Count] = {}
        self.dropped = 0
        self.written = 0
        self.failed = 0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._flushing: asyncio.Lock | None = None
        self._stopping = False

    @classmethod
    def from_settings(cls, settings: Settings) -> PredictionLog | None:
        if not settings.monitoring.enabled:
            return None
        return cls(LogStore(settings.resolved_log_url), settings.monitoring)

    # --- the hot path ---------------------------------------------------------------

    def record(self, model: str, version: int, source: str, inputs: Batch,
               outputs: Batch | None, latency_ms: float,
               request_id: str | None = None,
               rows: np.ndarray | None = None,
               keys: Sequence[Any] | None = None) -> np.ndarray | None:
        """Count one model call and maybe keep some of its rows; never blocks. Returns
        the rows kept (None: none).

        `outputs` is None for a call that failed: it is counted as an error, and none
        of its rows are sampled. `rows` keeps those rows instead of drawing (a shadow's
        answer is kept for the rows its primary's was, so the two pair up). `keys` (a
        pipeline's, one per row) are logged with the sampled rows, for feedback by key.
        Called on the event loop thread (no lock needed)."""
        ts = self.clock()
        n = _rows(inputs)
        key = (int(ts // 60) * 60, model, version, source)
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = Count()
        count.add(n, latency_ms, outputs is not None)
        if outputs is None or n == 0:
            return None
        if rows is not None:
            rows = rows[rows < n]
        elif self.config.sample_rate <= 0:
            return None
        elif n == 1:  # most HTTP calls: a scalar draw is several times cheaper
            if self.rng.random() >= self.config.sample_rate:
                return None
            rows = _FIRST
        else:
            rows = np.flatnonzero(self.rng.random(n) < self.config.sample_rate)
        if rows.size > self.config.max_rows_per_call:
            rows = np.sort(self.rng.choice(rows, self.config.max_rows_per_call, replace=False))
        room = self.config.buffer_size - self._buffered
        if rows.size > room:
            self._drop(int(rows.size - max(room, 0)))
            rows = rows[:max(room, 0)]
        if rows.size == 0:
            return None
        # copies of the sampled rows only: the buffer must not pin whole batches (or
        # see them change if a pipeline step edits its arrays in place)
        picked_keys = None if keys is None else [key_text(keys[i]) for i in rows.tolist()]
        self._calls.append(Call(ts, model, version, source, latency_ms, request_id,
                                _pick(inputs, rows), _pick(outputs, rows), int(rows.size),
                                rows, picked_keys))
        self._buffered += int(rows.size)
        if self._wake is not None and self._buffered * 4 >= self.config.buffer_size:
            self._wake.set()  # flush early rather than fill up and drop
        return rows

    def _drop(self, rows: int) -> None:
        self.dropped += rows
        self.metrics.predlog_rows.labels("dropped").inc(rows)

    # --- the background task --------------------------------------------------------

    async def start(self, metrics: Metrics | None = None) -> None:
        """Start the flusher (on the running loop, hence not in __init__)."""
        if metrics is not None:
            self.metrics = metrics
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        try:
            await asyncio.to_thread(self.store.ensure)
        except Exception as exc:
            # monitoring must not stop a service from serving: retried at each flush
            log.error("prediction log unavailable, will retry: %s", exc)
        self._task = asyncio.create_task(self._run(), name="prediction-log-flusher")

    async def stop(self) -> None:
        """Stop the flusher and write what is buffered.

        The flusher is let finish a write under way rather than cancelled: its thread
        would go on writing while the store closes, and those rows would be lost."""
        if self._task is not None:
            assert self._wake is not None
            self._stopping = True
            self._wake.set()
            await self._task
            self._task = None
        await self.flush()
        await asyncio.to_thread(self.store.close)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.flush_interval_s)
            self._wake.clear()
            if not self._stopping:  # stop() flushes the rest itself
                await self.flush()

    async def flush(self) -> None:
        """Write what accumulated so far (one transaction, in a worker thread)."""
        lock = self._flushing or asyncio.Lock()
        async with lock:
            calls, counts = list(self._calls), self._counts
            self._calls, self._buffered, self._counts = deque(), 0, {}
            if not calls and not counts:
                return
            sampled = sum(c.size for c in calls)
            try:
                # shielded: a cancelled caller must not leave counts both written and
                # put back for the next flush
                await asyncio.shield(asyncio.to_thread(self._write, calls, counts))
            except Exception as exc:
                log.warning("prediction log write failed (%d sampled rows lost, traffic "
                            "counts kept for the next try): %s", sampled, exc)
                self.failed += sampled
                self.metrics.predlog_rows.labels("failed").inc(sampled)
                for key, count in counts.items():  # merge back: counts stay exact
                    self._counts.setdefault(key, Count()).merge(count)
                return
            self.written += sampled
            self.metrics.predlog_rows.labels("written").inc(sampled)

    def _write(self, calls: list[Call], counts: dict[TrafficKey, Count]) -> None:
        self.store.write([row for call in calls for row in _records(call)], counts)


def _rows(batch: Batch) -> int:
    for values in batch.values():
        return int(values.shape[0]) if values.ndim else 1
    return 0


def _records(call: Call) -> list[dict[str, Any]]:
    """The sampled rows of one call as `mp_predictions` rows (in the flusher's thread)."""
    ts = datetime.fromtimestamp(call.ts, UTC)
    inputs = _columns(call.inputs, call.size)
    outputs = _columns(call.outputs, call.size)
    return [{"ts": ts, "model": call.model, "version": call.version, "source": call.source,
             "latency_ms": call.latency_ms, "request_id": call.request_id,
             "inputs": {k: v[i] for k, v in inputs.items()},
             "outputs": {k: v[i] for k, v in outputs.items()},
             "row_index": int(call.rows[i]),
             "row_key": None if call.keys is None else call.keys[i]}
            for i in range(call.size)]


def key_text(key: Any) -> str:
    """A pipeline key as the log stores it: a string as is, anything else (an int, a
    tuple of several columns) as JSON, so `42` and `"42"` name the same row."""
    if isinstance(key, str):
        return key
    if isinstance(key, tuple):
        key = list(key)
    return orjson.dumps(key, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _pick(batch: Batch, rows: np.ndarray) -> Picked:
    n = int(rows.max()) + 1
    out: Picked = {}
    for name, values in batch.items():
        if not values.ndim or values.shape[0] < n:
            continue  # another length (one value per batch, not per row): no row's
        if int(np.prod(values.shape[1:], dtype=np.int64)) > MAX_VALUES_PER_ROW:
            out[name] = {"shape": list(values.shape[1:]), "dtype": str(values.dtype)}
        else:
            out[name] = values[rows]
    return out


def _columns(picked: Picked, size: int) -> dict[str, list[Any]]:
    return {name: [values] * size if isinstance(values, dict) else jsonable(values)
            for name, values in picked.items()}
