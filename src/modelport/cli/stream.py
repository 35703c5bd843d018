"""`modelport stream`: score a broker's messages through a pipeline, until stopped.

Before it consumes anything, the command checks its configuration: the broker answers,
the model exists and loads, the writer's tables are there (or `create: true`). What is
wrong is one line and exit 1, messages untouched; an outage after that start is
retried with backoff. A `--burst` run that fails exits 1 too.

SIGTERM or SIGINT stops fetching; the batch in flight is written and acknowledged, then
the command exits 0. Whatever is still running after `--drain-timeout` seconds (an ack
stuck behind a broker outage) is abandoned and the command exits 1: its messages were
not acknowledged, so the broker delivers them again, to this worker's successor or a
peer. The default (30 s) is Kubernetes' termination grace period; keep the drain
timeout below the grace period, so the process ends on its own terms before SIGKILL.
A second signal abandons at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import typer

from modelport.cli.context import state
from modelport.config import ServiceConfig, load_config
from modelport.errors import ConfigError, ModelportError, NotFound
from modelport.logs import configure_logging
from modelport.service import Service
from modelport.settings import environment
from modelport.streams.config import StreamConfig, make_broker
from modelport.streams.worker import StreamWorker
from modelport.streams.writer import StreamWriter

log = logging.getLogger("modelport.stream")

LAG_EVERY_S = 5.0
"""Seconds between lag queries (one broker round trip each; the gauge and the line)."""
CLOSE_TIMEOUT_S = 10.0
"""Bound on closing the service and the broker after the worker stopped."""
LOG_STATUS_EVERY_S = 30.0
"""Seconds between status log lines when stdout is not a terminal."""


def stream(
    ctx: typer.Context,
    pipeline: Annotated[str, typer.Argument(help="The pipeline (in --config) to run.")],
    config: Annotated[Path, typer.Option(
        "--config", "-c", help="The service's modelport.yaml.")] = Path("modelport.yaml"),
    burst: Annotated[bool, typer.Option(
        "--burst", help="Exit once the stream is drained (a fetch comes back empty).")
    ] = False,
    drain_timeout: Annotated[float, typer.Option(
        min=0, help="On SIGTERM/SIGINT, seconds to finish and acknowledge the batch in "
                    "flight before abandoning it (it is redelivered).")] = 30.0,
    metrics_port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="Serve Prometheus metrics on this port (/metrics).",
        show_default=False)] = None,
    metrics_host: Annotated[str, typer.Option(
        help="Address the metrics port listens on.")] = "127.0.0.1",
) -> int:
    """Consume a stream (Redis Streams, NATS JetStream, Kafka) through a pipeline: score,
    write, then acknowledge; dead-letter what cannot be processed."""
    cli = state(ctx)
    service_config, spec = _only(load_config(config, environment()), pipeline, config)
    broker = make_broker(spec, f"{config}: pipeline {pipeline!r}: stream")
    live = sys.stdout.isatty()
    configure_logging(json=not live)
    with cli.registry() as reg:
        service = Service(cli.settings, service_config, reg)
        pipe = service.pipeline(pipeline)
        if isinstance(pipe.writer, StreamWriter):
            pipe.writer.lend(broker)
        worker = StreamWorker(
            pipe, broker, dead_letter_subject=spec.dead_letter, batch_size=spec.batch_size,
            fetch_timeout=spec.fetch_timeout, max_deliveries=spec.max_deliveries,
            codec=spec.codec, metrics=service.dataplane.metrics)
        run = StreamRun(service, worker, live=live, where=_describe(spec))
        return asyncio.run(run.main(burst=burst, drain_timeout=drain_timeout,
                                    metrics_port=metrics_port, metrics_host=metrics_host))


def _only(config: ServiceConfig, pipeline: str, path: Path
          ) -> tuple[ServiceConfig, StreamConfig]:
    """The service with just this pipeline and its model (load nothing else)."""
    wanted = next((p for p in config.pipelines if p.name == pipeline), None)
    if wanted is None:
        names = ", ".join(p.name for p in config.pipelines) or "none"
        raise NotFound(f"no pipeline named {pipeline!r} in {path} (pipelines: {names})")
    if wanted.stream is None:
        raise ConfigError(f"{path}: pipeline {pipeline!r} has no stream: section "
                          "(broker, dead_letter, batch_size, …); see docs/streams.md")
    only = config.model_copy(update={
        "pipelines": [wanted], "models": [m for m in config.models if m.ref == wanted.model]})
    return only, wanted.stream


def _describe(spec: StreamConfig) -> str:
    options = spec.broker.options
    source = options.get("stream") or options.get("subject") or options.get("topic") or ""
    return f"{spec.broker.type} {source}".strip()


class StreamRun:
    """The process around a worker: signals, the drain bound, metrics, the status."""

    def __init__(self, service: Service, worker: StreamWorker, *, live: bool,
                 where: str) -> None:
        self.service = service
        self.worker = worker
        self.live = live
        self.where = where
        self.lag: int | None = None
        self.timed_out = False
        self._main: asyncio.Task[Any] | None = None
        self._cleaning = False
        self._recent: deque[tuple[float, int]] = deque(maxlen=6)  # (time, processed)

    async def main(self, *, burst: bool, drain_timeout: float, metrics_port: int | None,
                   metrics_host: str) -> int:
        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()

        def on_signal(sig: signal.Signals) -> None:
            if self.worker.stopping:  # a second signal: do not wait
                self._abandon()
                return
            log.info("%s: finishing the batch in flight (at most %.0fs)", sig.name,
                     drain_timeout)
            self.worker.stop()
            loop.call_later(drain_timeout, self._abandon)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        server = None
        if metrics_port is not None:
            from prometheus_client import start_http_server

            server, _ = start_http_server(metrics_port, metrics_host,
                                          registry=self.service.dataplane.metrics.registry)
        status: asyncio.Task[None] | None = None
        try:
            await self._start()
            # after the start: the first lag query finds the consumer ready (a Kafka
            # consumer asked for lag while it joins its group leaks a member)
            status = asyncio.create_task(self._status())
            stats = await self.worker.run(burst=burst)
            await self._update_lag()  # for the last status line and the gauge
        except asyncio.CancelledError:
            if not self.timed_out:
                raise
            if self._main is not None:
                self._main.uncancel()  # our own cancellation, handled: this task goes on
            log.error("drain timeout: the batch in flight was abandoned; its messages "
                      "were not acknowledged and will be delivered again")
            return 1
        finally:
            self._cleaning = True
            if status is not None:
                status.cancel()
            await self._stop()
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
        await self.service.start(follow=True, strict=True)
        try:
            await self.worker.broker.start()
        except ModelportError as exc:
            raise ConfigError(f"stream {self.where}: {exc.message}") from None
        # what start-up loaded (libraries, the model) lives as long as the process: out
        # of the collector's way, a full collection no longer scans it every few seconds
        # (each scan a pause in consuming)
        gc.freeze()
        log.info("consuming %s for pipeline %s (batches of %d)", self.where,
                 self.worker.pipeline.name, self.worker.batch_size)

    async def _stop(self) -> None:
        for what, close in (("service", self.service.stop), ("broker", self.worker.broker.close)):
            try:
                await asyncio.wait_for(close(), CLOSE_TIMEOUT_S)
            except (ModelportError, OSError, TimeoutError) as exc:
                log.warning("closing the %s: %r", what, exc)

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
