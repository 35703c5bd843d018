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

Before it, the nightly retraining (`retrainer`): a modelport retrain job
(`modelport.jobs.retrain`) whose trainer trains on every listen so far (`music.train`)
and registers the candidate with the music gate's evidence (`music.gate`); modelport
then promotes it, or records why not, and guards it when a guard is given.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from modelport import (
    Frame,
    Metrics,
    ModelConfig,
    Pipeline,
    Registry,
    RetrainConfig,
    Service,
    ServiceConfig,
    Settings,
)
from modelport.jobs import (
    BatchJob,
    BatchOptions,
    BatchResult,
    KeyQuery,
    RetrainContext,
    Retrainer,
    Scheduler,
    Trained,
    report_job,
)
from modelport.pipeline import make_engine
from modelport.promotion import Decided

from music.als import AlsParams
from music.gate import register_candidate, verdict_of
from music.history import HistoryTensor, shown
from music.interactions import normalize
from music.recommender import POPULAR
from music.system import MODEL, System, single_threaded_blas
from music.train import TrainConfig, train

log = logging.getLogger("music.nightly")

CHUNK = 1_000
DEFAULT_CRON = "0 3 * * *"
"""03:00 UTC every day."""
REPORT_CRON = "30 3 * * *"
"""The daily report, once the nightly batch is done."""
RETRAIN_CRON = "0 2 * * *"
"""The nightly retraining, before the batch, which then scores with what it promoted."""
RETRAIN_PARAMS = AlsParams(factors=64, regularization=0.1, alpha=10.0, iterations=15)

Listens = Callable[[], pd.DataFrame]


def training_listens(system: System) -> pd.DataFrame:
    """Every listen in the listens table, as interactions (user, item, ts)."""
    engine = make_engine(system.database)
    try:
        with engine.connect() as conn:
            frame = pd.read_sql(f"SELECT user_id, track, ts FROM {system.table('listens')}",
                                conn)
    finally:
        engine.dispose()
    return normalize(pd.DataFrame({"user": frame["user_id"], "item": frame["track"],
                                   "ts": pd.to_datetime(frame["ts"], unit="s", utc=True)}),
                     source="listens")


def trainer(listens: Listens, *, params: AlsParams | None = RETRAIN_PARAMS,
            max_eval_users: int = 2000) -> Callable[[RetrainContext], Trained]:
    """A modelport trainer: train on `listens()`, register the candidate with the music
    gate's evidence, and hand that verdict to modelport as the gate."""
    def run(context: RetrainContext) -> Trained:
        config = TrainConfig(name=context.model, dataset="listens", params=params,
                             max_eval_users=max_eval_users)
        decision = register_candidate(context.registry, train(listens(), config), config)
        return Trained(decision.version, gate=Decided(verdict_of(decision)))
    return run


def retrainer(registry: Registry, listens: Listens, *, params: AlsParams | None = RETRAIN_PARAMS,
              guard: str | None = None, window: str = "10m",
              cron: str | None = RETRAIN_CRON) -> Retrainer:
    """The nightly retraining as a modelport retrain job (`run()` once, or `add_to`)."""
    config = RetrainConfig(name="music-retrain", model=MODEL, guard=guard, window=window,
                           schedule=cron)
    return Retrainer(registry, config, trainer=trainer(listens, params=params))


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
              retrain_cron: str | None = RETRAIN_CRON,
              metrics: Metrics | None = None) -> Scheduler:
    """The nightly retraining, the nightly batch and the daily report (over the last 24
    hours) on their crons."""
    settings = settings or system.settings()
    jobs = Scheduler(metrics=metrics)
    if retrain_cron:
        def retrain() -> None:
            with Registry(settings=settings) as registry:
                retrainer(registry, lambda: training_listens(system), cron=None).run("schedule")

        async def retrain_job() -> None:
            await asyncio.to_thread(retrain)

        jobs.add("music-retrain", retrain_cron, retrain_job)
    if cron:
        async def nightly() -> None:
            await run_nightly(system, settings)

        jobs.add("music-nightly", cron, nightly)
    if report_cron:
        jobs.add("music-report", report_cron,
                 report_job(settings, model=MODEL, out=report_path(system)))
    return jobs
