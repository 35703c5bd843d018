"""`modelport schedule`: run the pipelines' batch jobs and the retraining jobs on their
cron schedules; `modelport retrain`: run a retraining job once, now."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from modelport.cli.context import load_service_config, state
from modelport.errors import ConfigError
from modelport.jobs.retrain import Retrainer, add_retrain_jobs
from modelport.jobs.scheduler import Scheduler, add_pipeline_batches
from modelport.logs import configure_logging
from modelport.service import Service

log = logging.getLogger("modelport.jobs.scheduler")


def schedule(
    ctx: typer.Context,
    config: Annotated[Path, typer.Option(
        "--config", "-c", help="The service's modelport.yaml.")] = Path("modelport.yaml"),
    metrics_port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="Serve Prometheus metrics on this port (/metrics).",
        show_default=False)] = None,
    metrics_host: Annotated[str, typer.Option(
        help="Address the metrics port listens on.")] = "127.0.0.1",
    grace: Annotated[float, typer.Option(
        min=0, help="On SIGTERM, seconds to let running jobs finish before stopping them "
                    "(they resume from their checkpoints next time).")] = 25.0,
) -> None:
    """Run the batch jobs of pipelines with schedule: (cron, UTC) and keys:, and the
    retrain: jobs."""
    cli = state(ctx)
    service_config = load_service_config(config)
    scheduled = [p for p in service_config.pipelines if p.schedule]
    if not scheduled and not service_config.retrain:
        raise ConfigError(f"{config}: nothing to schedule (no pipeline has schedule:, "
                          "and there is no retrain:)")
    service_config = service_config.model_copy(update={
        "pipelines": scheduled,
        "models": [m for m in service_config.models if m.ref in {p.model for p in scheduled}]})
    configure_logging(json=cli.settings.server.log_json)
    with cli.registry() as reg:
        service = Service(cli.settings, service_config, reg)
        scheduler = Scheduler(metrics=service.dataplane.metrics)
        names = add_pipeline_batches(scheduler, service)
        add_retrain_jobs(scheduler, reg, service_config)
        names += [n for n in scheduler.jobs if n not in names]
        for name in names:
            job = scheduler.jobs[name]
            cli.err.print(f"{name}: {job.cron!r} (UTC), next at " + ", ".join(
                t.isoformat(timespec="seconds") for t in job.upcoming()), highlight=False,
                soft_wrap=True)
        asyncio.run(_run(service, scheduler, names, metrics_port, metrics_host, grace))


async def _run(service: Service, scheduler: Scheduler, names: list[str],
               metrics_port: int | None, metrics_host: str, grace: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = None
    if metrics_port is not None:
        from prometheus_client import start_http_server

        server, _ = start_http_server(metrics_port, metrics_host,
                                      registry=service.dataplane.metrics.registry)
    # versions are refreshed at the start of each run, not followed mid-run; what
    # cannot run (a model, a table) is said now, not at the first fire time
    await service.start(follow=False, strict=True)
    log.info("scheduling %s", ", ".join(
        f"{n} ({scheduler.jobs[n].cron}, next {scheduler.jobs[n].next_at.isoformat()})"
        for n in names))
    try:
        await scheduler.run_forever(stop)
        log.info("stopping: letting running jobs finish (up to %.0fs)", grace)
        await scheduler.drain(grace)
    finally:
        await service.stop()
        if server is not None:
            server.shutdown()


def retrain(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(
        metavar="NAME", help="The retrain: job to run (needed when there are several).",
        show_default=False)] = None,
    config: Annotated[Path, typer.Option(
        "--config", "-c", help="The service's modelport.yaml.")] = Path("modelport.yaml"),
) -> None:
    """Run a retrain: job once, now: train, register, gate, promote, guard."""
    cli = state(ctx)
    jobs = load_service_config(config).retrain
    chosen = [j for j in jobs if name is None or j.name == name]
    if len(chosen) != 1:
        known = ", ".join(j.name for j in jobs) or "none"
        raise ConfigError(f"{config}: " + (f"no retrain: job named {name!r}" if name else
                          "name the retrain: job to run") + f" (jobs: {known})")
    with cli.registry() as reg:
        outcome = Retrainer(reg, chosen[0]).run()
    verdict = "kept" if outcome.kept else "rolled back" if outcome.promoted else "not promoted"
    cli.out.print(f"{chosen[0].model}:{outcome.version} {verdict}: {outcome.reason}",
                  highlight=False)
