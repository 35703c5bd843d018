"""The scheduler behind `modelport schedule`: jobs on cron expressions, one run at a time.

A job is any `async () -> None` with a name and a cron expression (five fields, or six
with seconds last, as croniter reads them: `* * * * * */10` is every ten seconds, while
`*/10 * * * * *` is every second of minutes :00, :10, …), evaluated in UTC. Batch
runs of pipelines with `schedule:` and `keys:` are added by `add_pipeline_batches`;
reports (or anything else) are added the same way with `Scheduler.add`.

A job never overlaps itself: when its time comes while its previous run is still
going, that occurrence is skipped (logged, and counted as `skipped`). Fire times the
process missed (it was busy, asleep or down) coalesce into one run. Each run is
logged and counted in Prometheus metrics: runs by job and outcome, duration, and the
time of the last success (alert on its age). For deterministic tests, `run_pending(now)`
takes the time; `run_forever` asks the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from modelport.errors import ConfigError
from modelport.jobs.batch import BatchJob
from modelport.jobs.resolve import source_for
from modelport.jobs.run import BatchOptions
from modelport.monitoring.metrics import Metrics
from modelport.service import Service

log = logging.getLogger("modelport.jobs.scheduler")

JobFn = Callable[[], Awaitable[None]]
Clock = Callable[[], datetime]

MAX_SLEEP_S = 30.0
"""Longest the loop sleeps between looks at the clock (a clock jump is noticed by then)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ScheduledJob:
    name: str
    cron: str
    run: JobFn
    next_at: datetime
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def upcoming(self, n: int = 3) -> list[datetime]:
        """The next `n` fire times: what a person checks a cron expression by."""
        times = croniter(self.cron, self.next_at - timedelta(microseconds=1))
        return [times.get_next(datetime) for _ in range(n)]


class Scheduler:
    def __init__(self, *, metrics: Metrics | None = None, clock: Clock = utcnow) -> None:
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.jobs: dict[str, ScheduledJob] = {}

    def add(self, name: str, cron: str, run: JobFn) -> ScheduledJob:
        """Schedule `run` on `cron`; its first run is the first fire time from now on."""
        if name in self.jobs:
            raise ConfigError(f"two scheduled jobs are named {name!r}")
        if not croniter.is_valid(cron):
            raise ConfigError(f"job {name!r}: {cron!r} is not a cron expression (five fields, "
                              "or six with seconds last)")
        job = ScheduledJob(name, cron, run, _next(cron, self.clock()))
        self.jobs[name] = job
        return job

    def next_fire(self) -> datetime | None:
        return min((j.next_at for j in self.jobs.values()), default=None)

    def run_pending(self, now: datetime | None = None) -> list[str]:
        """Start every job that is due at `now` (default: the clock); returns their names."""
        now = now or self.clock()
        started = []
        for job in self.jobs.values():
            if job.next_at > now:
                continue
            due, job.next_at = job.next_at, _next(job.cron, now)  # missed fires coalesce
            if job.running:
                log.warning("job %s still running: skipped its %s run", job.name,
                            due.isoformat(), extra={"job": job.name, "outcome": "skipped"})
                self.metrics.job_runs.labels(job.name, "skipped").inc()
                continue
            job.task = asyncio.create_task(self._run(job), name=f"job-{job.name}")
            started.append(job.name)
        return started

    async def _run(self, job: ScheduledJob) -> None:
        log.info("job %s started", job.name, extra={"job": job.name})
        started = time.perf_counter()
        outcome = "success"
        try:
            await job.run()
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:  # one failed run must not stop the schedule
            outcome = "failure"
            log.exception("job %s failed: %s", job.name, exc,
                          extra={"job": job.name, "outcome": outcome})
        finally:
            seconds = time.perf_counter() - started
            self.metrics.job_runs.labels(job.name, outcome).inc()
            self.metrics.job_duration.labels(job.name).observe(seconds)
            if outcome == "success":
                self.metrics.job_last_success.labels(job.name).set(time.time())
                log.info("job %s finished in %.1fs", job.name, seconds,
                         extra={"job": job.name, "outcome": outcome, "duration_s": seconds})

    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        """Start jobs as they fall due until `stop` is set."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            self.run_pending()
            nxt = self.next_fire()
            wait = MAX_SLEEP_S if nxt is None else (nxt - self.clock()).total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(max(wait, 0.0), MAX_SLEEP_S))

    async def drain(self, timeout: float) -> None:
        """Let running jobs finish for up to `timeout` seconds, then cancel them (a batch
        job resumes from its last checkpoint on its next run)."""
        tasks = [j.task for j in self.jobs.values() if j.task is not None and j.running]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _next(cron: str, after: datetime) -> datetime:
    nxt: datetime = croniter(cron, after).get_next(datetime)
    return nxt


def add_pipeline_batches(scheduler: Scheduler, service: Service) -> list[str]:
    """A job per pipeline with `schedule:` (and `keys:`): a batch run of the pipeline."""
    names = []
    for config in service.config.pipelines:
        if config.schedule is None:
            continue
        if not config.keys:
            raise ConfigError(f"pipeline {config.name!r} has a schedule but no keys: to score "
                              "(a query, or a .csv/.parquet file)")
        scheduler.add(config.name, config.schedule,
                      _batch_run(service, config.name, config.chunk_size))
        names.append(config.name)
    return names


def _batch_run(service: Service, pipeline: str, chunk_size: int) -> JobFn:
    async def run() -> None:
        # pick up alias moves between runs; within a run the version stays put
        await service.dataplane.refresh()
        source = source_for(service, pipeline)
        job = BatchJob(service, pipeline, source, BatchOptions(chunk_size=chunk_size))
        result = await job.run()
        if result.rejected:
            log.warning("job %s: %d rows rejected (in %s)", pipeline, result.rejected,
                        result.rejects_to, extra={"job": pipeline, "rejected": result.rejected})
    return run
