"""The nightly batch: every user's top-k, precomputed, for when the model cannot answer.

A modelport batch job over a pipeline: keys = every user with a listen (a query on
the listens table), retriever = the history store, `pre` = the history tensor, model
= `recommender@production`, `post` = played tracks taken out plus a timestamp, writer
= the top-k store (a SQL table in embedded mode, Redis in full mode), with the model
version of each row. It checkpoints after each chunk (in `mp_batch_checkpoints`), so a
run that is killed resumes where it stopped. After the users, one more row: the
popular list (`__popular__`), for users the batch has not seen.

Scheduling: `music nightly` runs it once (the Kubernetes CronJob in deploy/ calls it);
`music nightly --cron "0 3 * * *"` and `music up` run it in-process on modelport's
scheduler (`modelport.jobs.scheduler`: cron in UTC, never overlapping itself), beside
the daily report (`modelport.jobs.report`) on the recommender's prediction log.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from modelport import (
    Frame,
    Metrics,
    ModelConfig,
    Pipeline,
    Registry,
    Service,
    ServiceConfig,
    Settings,
)
from modelport.jobs import BatchJob, BatchOptions, BatchResult, KeyQuery, Scheduler, report_job

from music.history import HistoryTensor, shown
from music.recommender import POPULAR
from music.system import MODEL, System, single_threaded_blas

log = logging.getLogger("music.nightly")

CHUNK = 1_000
DEFAULT_CRON = "0 3 * * *"
"""03:00 UTC every day."""
REPORT_CRON = "30 3 * * *"
"""The daily report, once the nightly batch is done."""


def stamp(frame: Frame) -> Frame:
    """`post`: played tracks out (all the model's list kept), and when it was made."""
    frame = shown(frame)
    frame.columns["computed_at"] = [time.time()] * len(frame)
    return frame


def nightly_service(system: System, settings: Settings, registry: Registry) -> Service:
    config = ServiceConfig(name="music-nightly", models=[ModelConfig(ref=system.model_ref)])
    service = Service(settings, config, registry)
    service.add(Pipeline(
        "nightly", MODEL, service.dataplane, retriever=system.history_retriever(),
        writer=system.topk_writer(), pre=HistoryTensor(service, MODEL),
        post=stamp, version_column="model_version"))
    return service


async def run_nightly(system: System, settings: Settings | None = None) -> BatchResult:
    """One run: every user, then the popular list."""
    single_threaded_blas()
    settings = settings or system.settings()
    with Registry(settings=settings) as registry:
        service = nightly_service(system, settings, registry)
        await service.start(follow=False)
        try:
            service.dataplane.deployment(MODEL)  # NotReady now, not after the keys query
            listens = system.table("listens")
            source = KeyQuery(system.database, f"SELECT user_id FROM {listens}")
            job = BatchJob(service, "nightly", source,
                           BatchOptions(chunk_size=CHUNK, job_id=f"{system.prefix}nightly"),
                           home=system.data_dir)
            result = await job.run()
            nightly = service.pipeline("nightly")
            await nightly.write(await nightly.score(Frame([POPULAR], {"history": [None]})))
        finally:
            await service.stop()
    log.info("nightly batch: %d users in %.1fs", result.written, result.seconds)
    return result


def report_path(system: System) -> Path:
    return system.data_dir / "reports" / "report-{until:%Y-%m-%d}.html"


def scheduler(system: System, settings: Settings | None = None, *,
              cron: str | None = DEFAULT_CRON, report_cron: str | None = REPORT_CRON,
              metrics: Metrics | None = None) -> Scheduler:
    """The nightly batch and the daily report (over the last 24 hours) on their crons."""
    settings = settings or system.settings()
    jobs = Scheduler(metrics=metrics)
    if cron:
        async def nightly() -> None:
            await run_nightly(system, settings)

        jobs.add("music-nightly", cron, nightly)
    if report_cron:
        jobs.add("music-report", report_cron,
                 report_job(settings, model=MODEL, out=report_path(system)))
    return jobs
