"""Batch jobs on Ray Data: the job `BatchJob` runs, cut into blocks that a Ray cluster
reads, scores and writes in parallel (`modelport batch --engine ray`).

The same job definition, source, checkpoint and writers as the local job; what differs
is who does the work. The driver (this process) plans the blocks (key ranges of a
query, row ranges of a file: `modelport.jobs.blocks`), and Ray Data runs a read task
per block, then `map_batches` over an actor pool (both in `modelport.jobs.ray_tasks`):
each actor builds the `Service` from the same configuration (its registry: verified
sha256, the same flavors and signature checks) once, and for each batch looks the keys
up, scores and upserts with the pipeline's own components, answering with what it did
per block. The driver counts
each block's rows; when all of a block's rows are written it commits the block with
its rejects and the checkpoint's counts, in one transaction.

Kills: a killed actor or read task is restarted and its batch redone by Ray (upserts
make that harmless); a killed driver ends the Ray job, and running the command again
redoes the blocks not committed. Either way: exactly one output row per key.

This module imports Ray; nothing imports it unless the Ray engine is chosen.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import ray
import ray.data

from modelport.config import PipelineEntry, RayConfig, ServiceConfig
from modelport.errors import ConfigError, ModelportError
from modelport.jobs.blocks import Block, BlockTable, plan
from modelport.jobs.definition import definition
from modelport.jobs.ray_tasks import _BlockSource, _Scorer
from modelport.jobs.resolve import check_lookup, job_state
from modelport.jobs.run import BatchOptions, BatchResult, Reporter, tally
from modelport.jobs.sources import Resume, Source, fingerprint, job_id
from modelport.jobs.state import Checkpoint, JobState, RejectRow
from modelport.service import Service
from modelport.settings import Settings

log = logging.getLogger("modelport.jobs.ray")

READ_CPUS = 0.25
"""CPUs a read task reserves: it mostly waits on the database or the disk, and a whole
CPU each would leave none for the actors on a small cluster."""


class RayBatchJob:
    """One run of a batch job on Ray; `job.run()` (blocking) returns what it did.

    `service` is the driver's, used for the job's definition and checkpoint; pass
    `pinned`, the versions it loaded (`pinned_versions`), so every actor scores with
    them, as the local job does."""

    def __init__(self, service: Service, pipeline: str, source: Source,
                 options: BatchOptions | None = None, ray_config: RayConfig | None = None,
                 *, pinned: dict[str, int] | None = None, reporter: Reporter | None = None,
                 home: Path | None = None) -> None:
        self.service = service
        self.pipeline = service.pipeline(pipeline)
        self.source = source
        self.options = options or BatchOptions()
        self.ray = ray_config or RayConfig()
        self.pinned = pinned or {}
        self.reporter = reporter
        self.home = home or service.settings.home
        self.job_id = self.options.job_id or job_id(pipeline, source)

    def run(self) -> BatchResult:
        pipe, opts = self.pipeline, self.options
        result = BatchResult(self.job_id, pipe.name, opts.dry_run)
        if not opts.dry_run and pipe.writer is None:
            raise ConfigError(f"pipeline {pipe.name!r} has no writer for the results")
        state: JobState | None = None
        try:
            self.source.check()
            check_lookup(self.source, pipe)
            # "on ray": a run the local engine left unfinished is not resumed here (its
            # checkpoint is a last key, not blocks), nor the other way round
            described = f"{self.source.describe()} #{fingerprint(self.source)} on ray"
            cp = Checkpoint(self.job_id, pipe.name, described)
            table: BlockTable | None = None
            if opts.dry_run:
                blocks = plan(self.source, self.ray.block_size)
            else:
                state = job_state(self.service, pipe.name, self.job_id, opts.rejects_file,
                                  self.home)
                cp = state.open(self.job_id, pipe.name, described, fresh=opts.fresh,
                                definition=definition(self.service, pipe.name))
                result.rejects_to = state.describe_rejects()
                result.resumed_after = cp.read
                table = BlockTable(state.engine)
                blocks = table.open(self.job_id, cp.run,
                                    lambda: plan(self.source, self.ray.block_size))
            todo = [b for b in blocks if not b.done]
            log.info("batch job %s on ray: %d blocks, %d to do", self.job_id, len(blocks),
                     len(todo))
            started = time.perf_counter()
            if self.reporter is not None:
                self.reporter.start(self._total(cp.read), cp.read, started)
            try:
                self._score(todo, cp, state, table, result)
            except BaseException:
                result.seconds = time.perf_counter() - started
                if state is not None:
                    _quietly(state.finish, cp, "failed")
                raise
            result.seconds = time.perf_counter() - started
            result.total_rejected = cp.rejected
            if state is not None:
                state.finish(cp, "done")
        finally:
            self.source.close()
            if state is not None:
                state.close()
        log.info("batch job %s: %d read, %d written, %d rejected in %.1fs",
                 self.job_id, result.read, result.written, result.rejected, result.seconds,
                 extra={"job_id": self.job_id, "pipeline": pipe.name})
        return result

    def _total(self, done: int) -> int | None:
        try:
            total = self.source.count(Resume())
        except ModelportError as exc:  # the job goes on without a total
            log.warning("could not count the rows of batch job %s: %s", self.job_id, exc)
            return None
        return None if total is None else max(total, done)

    def _score(self, todo: list[Block], cp: Checkpoint, state: JobState | None,
               table: BlockTable | None, result: BatchResult) -> None:
        if not todo:
            return
        progress = {b.index: _Progress() for b in todo}

        def commit(index: int) -> None:
            p = progress.pop(index)
            tally(cp, result, p.read, p.read - len(p.rejects), p.rejects)
            if state is not None and table is not None:  # every row of it is written
                state.commit(cp, p.rejects, table.mark_done(cp.job_id, cp.run, index))

        try:
            for batch in self._dataset(todo).iter_batches(batch_format="numpy",
                                                          batch_size=None):
                for row in _rows(batch):
                    index = int(row["block"])
                    progress[index].add(row)
                    if self.reporter is not None:
                        self.reporter.advance(int(row["read"]))
                    if progress[index].complete:
                        commit(index)
        except ModelportError:
            raise
        except Exception as exc:  # Ray's, wrapping what failed in a task or an actor
            raise ModelportError(f"batch job {self.job_id} failed on Ray (run it again to "
                                 f"resume): {_first_line(exc)}") from exc
        # every block's rows have come back: those left had none (an empty key range)
        for index in list(progress):
            commit(index)

    def _dataset(self, todo: list[Block]) -> Any:
        """Read tasks (one per block), then the scoring actors; runs as it is iterated."""
        connect(self.ray.address)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the command shows its own
        context.print_on_execution_start = False
        return ray.data.read_datasource(
            _BlockSource(self.source, todo, self.options.chunk_size),
            override_num_blocks=len(todo),
            num_cpus=READ_CPUS,
        ).map_batches(
            _Scorer, fn_constructor_args=(self._actor_settings(), self._actor_config(),
                                          self.pipeline.name, self.source.lookup,
                                          self.options.dry_run, os.getcwd()),
            batch_size=self.options.chunk_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.ray.actors),
            num_cpus=self.ray.cpus_per_actor)

    def _actor_settings(self) -> Settings:
        # the actors' registry is the driver's: an absolute home, wherever they run
        return self.service.settings.model_copy(
            update={"home": self.service.settings.home.resolve()})

    def _actor_config(self) -> ServiceConfig:
        """The pipeline's configuration, with the versions the driver loaded pinned:
        every actor scores with the same model, even if its alias moves meanwhile."""
        config = self.service.config
        models = [m.model_copy(update={"ref": self._pin(m.ref)}) for m in config.models]
        pipelines = [p.model_copy(update={"model": self._pin(p.model)})
                     if isinstance(p, PipelineEntry) and p.model else p
                     for p in config.pipelines if p.name == self.pipeline.name]
        return config.model_copy(update={"models": models, "pipelines": pipelines})

    def _pin(self, ref: str) -> str:
        from modelport.registry.registry import parse_ref

        name = parse_ref(ref)[0]
        return f"{name}:{self.pinned[name]}" if name in self.pinned else ref


def pinned_versions(service: Service) -> dict[str, int]:
    """The version each model of a started service serves, by registered name."""
    from modelport.registry.registry import parse_ref

    return {parse_ref(ep.config.ref)[0]: ep.current.version
            for ep in service.dataplane.endpoints.values() if ep.current is not None}


def connect(address: str | None) -> None:
    """Join the cluster at `address`, or start a local Ray (no dashboard) for the job."""
    if ray.is_initialized():
        return
    # the actors' own logs stay in the cluster's log files; the command prints a summary
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        return
    # A Ray of the job's own listens on loopback only: without token auth, whoever
    # reaches a Ray node can run code on it. Ray binds a node to the host's address even
    # when told 127.0.0.1, except where it assumes a laptop (this switch, which the
    # variable RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 also sets, but only before import).
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    # and its workers run at the driver's priority (Ray's default, nice 15, is for
    # sharing a node with the Ray's own processes; here the job is all there is)
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, _system_config={"worker_niceness": 0})


@dataclass
class _Progress:
    """What the actors reported of one block so far."""

    read: int = 0
    total: int | None = None
    rejects: list[RejectRow] = field(default_factory=list)

    def add(self, row: dict[str, Any]) -> None:
        self.read += int(row["read"])
        self.rejects += [RejectRow(key, reason, payload)
                         for key, reason, payload in orjson.loads(row["rejects"])]
        if int(row["total"]) >= 0:  # the block's last rows say how many it has
            self.total = int(row["total"])

    @property
    def complete(self) -> bool:
        return self.total is not None and self.read >= self.total


def _rows(batch: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    names = list(batch)
    for values in zip(*(batch[n] for n in names), strict=True):
        yield dict(zip(names, values, strict=True))


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _quietly(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:  # the error that stopped the job matters more
        log.warning("could not mark the batch job as failed: %s", exc)
