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
import sys
from pathlib import Path
from typing import Annotated

import typer

from modelport.cli.context import load_service_config, state
from modelport.errors import ConfigError
from modelport.logs import configure_logging
from modelport.service import Service
from modelport.streams.runner import StreamRunner, describe, stream_config, stream_worker


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
    service_config = load_service_config(config, pipeline=pipeline)
    if service_config.pipelines[0].stream is None:
        raise ConfigError(f"{config}: pipeline {pipeline!r} has no stream: section "
                          "(broker, dead_letter, batch_size, …); see docs/streams.md")
    live = sys.stdout.isatty()
    configure_logging(json=not live)
    with cli.registry() as reg:
        service = Service(cli.settings, service_config, reg)
        worker = stream_worker(service, pipeline, where=str(config))
        runner = StreamRunner(service, worker, live=live,
                              where=describe(stream_config(service, pipeline)))
        return asyncio.run(runner.main(burst=burst, drain_timeout=drain_timeout,
                                       metrics_port=metrics_port, metrics_host=metrics_host))
