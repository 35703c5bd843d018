"""A stream worker run on a service: start, consume, report the lag, stop.

`StreamRunner.run()` is the part an application embeds (a server's background task):
it starts what the worker needs (the service unless it was started, the worker's
pipeline unless it is the service's, the broker), checks it as a command checks its
configuration, consumes until `stop()` (or, `burst`, until the stream is drained),
queries the lag every `LAG_EVERY_S` for the gauge and the status, and closes what it
started. `StreamRunner.main()` is the process around it (`modelport stream`):
SIGTERM/SIGINT, the drain bound, a metrics port, the exit code.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from modelport.errors import ConfigError, ModelportError, NotFound
from modelport.service import Service
from modelport.streams.config import StreamConfig, make_broker, make_codec
from modelport.streams.worker import StreamWorker, WorkerStats
from modelport.streams.writer import StreamWriter

log = logging.getLogger("modelport.stream")

LAG_EVERY_S = 5.0
"""Seconds between lag queries (one broker round trip each; the gauge and the line)."""
CLOSE_TIMEOUT_S = 10.0
"""Bound on closing the service and the broker after the worker stopped."""
LOG_STATUS_EVERY_S = 30.0
"""Seconds between status log lines when stdout is not a terminal."""


def stream_worker(service: Service, pipeline: str, *, where: str = "") -> StreamWorker:
    """The worker of `pipeline`'s `stream:` section, over the service's pipeline (its
    broker made, not started). `where` prefixes configuration errors."""
    spec = stream_config(service, pipeline)
    prefix = f"{where or 'config'}: pipeline {pipeline!r}: stream"
    broker = make_broker(spec, prefix)
    codec = make_codec(spec, prefix)
    pipe = service.pipeline(pipeline)
    for writer in (pipe.writer, pipe.shadow_writer):
        if isinstance(writer, StreamWriter):
            writer.lend(broker, spec.avro)
    return StreamWorker(
        pipe, broker, dead_letter_subject=spec.dead_letter, batch_size=spec.batch_size,
        fetch_timeout=spec.fetch_timeout, max_deliveries=spec.max_deliveries,
        codec=codec, metrics=service.metrics)


def stream_config(service: Service, pipeline: str) -> StreamConfig:
    """`pipeline`'s `stream:` section; a `ConfigError` when it has none."""
    wanted = next((p for p in service.config.pipelines if p.name == pipeline), None)
    if wanted is None:
        raise NotFound(f"no pipeline named {pipeline!r}")
    if wanted.stream is None:
        raise ConfigError(f"pipeline {pipeline!r} has no stream: section "
                          "(broker, dead_letter, batch_size, …); see docs/streams.md")
    return wanted.stream


def describe(spec: StreamConfig) -> str:
    """The broker and what it reads, for the log and the status line."""
    options = spec.broker.options
    source = options.get("stream") or options.get("subject") or options.get("topic") or ""
    return f"{spec.broker.type} {source}".strip()


class StreamRunner:
    """A worker on a service: what starts and stops around it, the lag, the status.

    `live`: a status line on stdout every second (a terminal); otherwise a status log
    line every `LOG_STATUS_EVERY_S`."""

    def __init__(self, service: Service, worker: StreamWorker, *, where: str = "",
                 live: bool = False) -> None:
        self.service = service
        self.worker = worker
        self.where = where or worker.pipeline.name
        self.live = live
        self.lag: int | None = None
        self.timed_out = False
        self._main: asyncio.Task[Any] | None = None
        self._cleaning = False
        self._started_service = False
        self._started_pipeline = False
        self._recent: deque[tuple[float, int]] = deque(maxlen=6)  # (time, processed)

    def stop(self) -> None:
        """Stop fetching; the batch in flight is written and acknowledged first."""
        self.worker.stop()

    async def run(self, *, burst: bool = False) -> WorkerStats:
        """Start, consume until stopped (`burst`: until a fetch comes back empty), and
        close what this run started, whatever happens."""
        self._cleaning = False
        status: asyncio.Task[None] | None = None
        try:
            await self._start()
            # after the start: the first lag query finds the consumer ready (a Kafka
            # consumer asked for lag while it joins its group leaks a member)
            status = asyncio.create_task(self._status())
            stats = await self.worker.run(burst=burst)
            await self._update_lag()  # for the last status line and the gauge
            return stats
        finally:
            self._cleaning = True
            if status is not None:
                status.cancel()
            await self._stop()

    async def main(self, *, burst: bool = False, drain_timeout: float = 30.0,
                   metrics_port: int | None = None,
                   metrics_host: str = "127.0.0.1") -> int:
        """The process: `run()` until SIGTERM/SIGINT (then at most `drain_timeout`
        seconds to finish the batch in flight; a second signal abandons it at once),
        metrics on `metrics_port`; returns the exit code."""
        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()

        def on_signal(sig: signal.Signals) -> None:
            if self.worker.stopping:  # a second signal: do not wait
                self._abandon()
                return
            log.info("%s: finishing the batch in flight (at most %.0fs)", sig.name,
                     drain_timeout)
            self.stop()
            loop.call_later(drain_timeout, self._abandon)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        server = None
        if metrics_port is not None:
            from prometheus_client import start_http_server

            server, _ = start_http_server(metrics_port, metrics_host,
                                          registry=self.service.metrics.registry)
        try:
            stats = await self.run(burst=burst)
        except asyncio.CancelledError:
            if not self.timed_out:
                raise
            if self._main is not None:
                self._main.uncancel()  # our own cancellation, handled: this task goes on
            log.error("drain timeout: the batch in flight was abandoned; its messages "
                      "were not acknowledged and will be delivered again")
            return 1
        finally:
            if server is not None:
                server.shutdown()
        self._print_status(final=True)
        log.info("stopped: %d processed, %d dead-lettered in %d batches", stats.processed,
                 stats.dead_lettered, stats.batches)
        if burst and stats.abandoned:  # the stream is not drained: say so to the caller
            log.error("%d messages were left unacknowledged by a backing service that "
                      "stayed down; they will be delivered again", stats.abandoned)
            return 1
        return 0

    def _abandon(self) -> None:
        # cleanup is not interrupted: it closes connections and is bounded on its own
        if self._main is not None and not self._main.done() and not self._cleaning:
            self.timed_out = True
            self._main.cancel()

    async def _start(self) -> None:
        """The check at start: the model loads, the pipeline's tables and services are
        there, the broker answers; else a `ConfigError` naming what is not (an outage
        later is retried with backoff). The broker comes last: a consumer that joins its
        group holds partitions, which nobody reads while a model is still loading."""
        if not self.service.started:
            await self.service.start(strict=True)
            self._started_service = True
        pipeline = self.worker.pipeline
        if self.service.pipelines.get(pipeline.name) is not pipeline:
            try:
                await pipeline.start()
            except ModelportError as exc:
                raise ConfigError(f"pipeline {pipeline.name}: {exc.message}") from None
            self._started_pipeline = True
        try:
            await self.worker.broker.start()
        except ModelportError as exc:
            raise ConfigError(f"stream {self.where}: {exc.message}") from None
        self.service.settle()
        log.info("consuming %s for pipeline %s (batches of %d)", self.where,
                 pipeline.name, self.worker.batch_size)

    async def _stop(self) -> None:
        closing: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self._started_service:
            closing.append(("service", self.service.stop))
        if self._started_pipeline:
            closing.append(("pipeline", self.worker.pipeline.close))
        closing.append(("broker", self.worker.broker.close))
        for what, close in closing:
            try:
                await asyncio.wait_for(close(), CLOSE_TIMEOUT_S)
            except (ModelportError, OSError, TimeoutError) as exc:
                log.warning("closing the %s: %r", what, exc)
        self._started_service = self._started_pipeline = False

    async def _status(self) -> None:
        """Every second: the status line (or, off a terminal, a log line now and then);
        the lag gauge every LAG_EVERY_S."""
        next_lag = next_log = 0.0
        while True:
            now = time.monotonic()
            self._recent.append((now, self.worker.stats.processed))
            if now >= next_lag:
                next_lag = now + LAG_EVERY_S
                await self._update_lag()
            if self.live:
                self._print_status()
            elif now >= next_log:
                next_log = now + LOG_STATUS_EVERY_S
                stats = self.worker.stats
                log.info("status", extra={"processed": stats.processed,
                                          "dead_lettered": stats.dead_lettered,
                                          "redeliveries": stats.redeliveries,
                                          "rate": round(self.rate(), 1), "lag": self.lag})
            await asyncio.sleep(1.0)

    def rate(self) -> float:
        """Messages per second over the last few seconds."""
        if len(self._recent) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._recent[0], self._recent[-1]
        return (n1 - n0) / max(t1 - t0, 1e-9)

    async def _update_lag(self) -> None:
        try:
            self.lag = await asyncio.wait_for(self.worker.broker.lag(), LAG_EVERY_S)
        except (ModelportError, TimeoutError) as exc:
            log.debug("lag unknown: %s", exc)
            self.lag = None
        if self.lag is not None and self.worker.metrics is not None:
            self.worker.metrics.stream_lag.labels(self.worker.pipeline.name).set(self.lag)

    def _print_status(self, *, final: bool = False) -> None:
        if not self.live:
            return
        s = self.worker.stats
        lag = "?" if self.lag is None else f"{self.lag:,}"
        line = (f"{self.worker.pipeline.name} ← {self.where}  {self.rate():,.0f} msg/s  "
                f"processed {s.processed:,}  dead-lettered {s.dead_lettered:,}  "
                f"redelivered {s.redeliveries:,}  lag {lag}")
        sys.stdout.write(f"\r{line}\x1b[K" + ("\n" if final else ""))
        sys.stdout.flush()
