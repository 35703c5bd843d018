"""Batch jobs: score a query or a file through a pipeline, in chunks, resumably.

The batch trigger is a thin adapter like the others: chunks of keys (looked up with
the pipeline's retriever) or of rows (from a file, or a query that selects them) go
through `Pipeline.score`, so the same data plane and batcher as the server score them,
and `Pipeline.write` upserts the results with the pipeline's writer. Reading the next chunks and
writing the previous ones overlap scoring the current one (at most two chunks read
ahead, three being written), so memory is bounded by the chunk size, not the data size.

After each chunk's results are written, its checkpoint (and its rejects) are
committed (see `modelport.jobs.state`); a job that is killed and started again
continues after the last committed chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from modelport.errors import ConfigError
from modelport.jobs.definition import definition
from modelport.jobs.resolve import check_lookup, job_state
from modelport.jobs.run import BatchOptions, BatchResult, Reporter, rejects_of, tally
from modelport.jobs.sources import Chunk, Resume, Source, fingerprint, job_id
from modelport.jobs.state import Checkpoint, JobState
from modelport.pipeline import Frame, Pipeline, Scored
from modelport.service import Service

log = logging.getLogger("modelport.jobs.batch")

T = TypeVar("T")

WRITES_IN_FLIGHT = 3
"""Chunks being written at once, on as many connections: while one waits for its
commit, the database works on the others (with bench/batch.py, 3 beat 2, and 4 or 6
did no better than 3)."""


class BatchJob:
    """One run of a batch job; `await job.run()` returns what it did."""

    def __init__(self, service: Service, pipeline: str, source: Source,
                 options: BatchOptions | None = None, *,
                 reporter: Reporter | None = None, home: Path | None = None) -> None:
        self.service = service
        self.pipeline: Pipeline = service.pipeline(pipeline)
        self.source = source
        self.options = options or BatchOptions()
        self.reporter = reporter
        self.home = home or service.settings.home
        self.job_id = self.options.job_id or job_id(pipeline, source)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="batch-source")
        self._counting: asyncio.Future[int | None] | None = None
        self._started = time.perf_counter()

    async def run(self) -> BatchResult:
        pipe, opts = self.pipeline, self.options
        result = BatchResult(self.job_id, pipe.name, opts.dry_run)
        if pipe.model is not None:  # NotReady, in one line, if not loaded
            self.service.dataplane.deployment(pipe.model)
        if not opts.dry_run and pipe.writer is None:
            raise ConfigError(f"pipeline {pipe.name!r} has no writer for the results")
        state: JobState | None = None
        try:
            await self._in_thread(self.source.check)  # a query says here if it has rows
            check_lookup(self.source, pipe)
            # what the source is, for people, and a fingerprint that tells sources apart
            described = f"{self.source.describe()} #{fingerprint(self.source)}"
            cp = Checkpoint(self.job_id, pipe.name, described)
            if not opts.dry_run:
                state = await asyncio.to_thread(self._state)
                cp = await asyncio.to_thread(state.open, self.job_id, pipe.name, described,
                                             fresh=opts.fresh,
                                             definition=definition(self.service, pipe.name))
                result.rejects_to = state.describe_rejects()
                result.resumed_after = cp.read
                if cp.read:
                    log.info("resuming batch job %s after %d rows (%d chunks)",
                             self.job_id, cp.read, cp.chunks)
            resume = Resume(cp.last_key, cp.read)
            if self.reporter is not None:  # the total, for the display only, is counted
                # beside the first chunks (a count(*) of the query can take a while)
                self._counting = asyncio.ensure_future(self._count(resume, cp.read))
            started = self._started = time.perf_counter()
            try:
                await self._score_all(resume, cp, state, result)
            except BaseException:
                result.seconds = time.perf_counter() - started
                if state is not None:  # best effort: the last checkpoint stands either way
                    await asyncio.to_thread(_quietly, state.finish, cp, "failed")
                raise
            result.seconds = time.perf_counter() - started
            result.total_rejected = cp.rejected
            if state is not None:
                await asyncio.to_thread(state.finish, cp, "done")
        finally:
            if self._counting is not None:  # no chunk committed: the display starts here
                total = await self._counting
                if self.reporter is not None:
                    self.reporter.start(total, cp.read, self._started)
            await self._in_thread(self.source.close)
            self._thread.shutdown(wait=False)
            if state is not None:
                state.close()
        log.info("batch job %s: %d read, %d written, %d rejected in %.1fs",
                 self.job_id, result.read, result.written, result.rejected, result.seconds,
                 extra={"job_id": self.job_id, "pipeline": pipe.name})
        return result

    async def _score_all(self, resume: Resume, cp: Checkpoint, state: JobState | None,
                         result: BatchResult) -> None:
        # a chunk's write (the database's work, mostly) and then its checkpoint go on
        # while the next chunks are scored and read, up to WRITES_IN_FLIGHT at once;
        # each checkpoint commits after its chunk's results and the one before it
        pending: deque[tuple[asyncio.Task[None], asyncio.Task[None]]] = deque()
        previous: asyncio.Task[None] | None = None
        try:
            async for chunk, found in self._chunks(resume):
                scored = await self.pipeline.score(found)
                writing = asyncio.create_task(self._write(scored))
                previous = asyncio.create_task(self._commit(
                    previous, writing, chunk, found, scored, cp, state, result))
                pending.append((previous, writing))
                if len(pending) >= WRITES_IN_FLIGHT:
                    await pending.popleft()[0]
            while pending:
                await pending.popleft()[0]
        except BaseException:
            # let the writes under way end, written or not: their checkpoints are not
            await asyncio.gather(*(t for pair in pending for t in pair), return_exceptions=True)
            raise

    async def _write(self, scored: Scored) -> None:
        if not self.options.dry_run:
            await self.pipeline.write(scored)

    async def _commit(self, previous: asyncio.Task[None] | None, writing: asyncio.Task[None],
                      chunk: Chunk, found: Frame, scored: Scored, cp: Checkpoint,
                      state: JobState | None, result: BatchResult) -> None:
        """Once a chunk's results are written and the chunk before it committed, count
        it and commit its checkpoint."""
        if previous is not None:
            await previous
        await writing
        rejects = rejects_of(chunk.frame, found, scored)
        read, written = len(chunk.frame), len(scored.results)
        tally(cp, result, read, written, rejects)
        cp.last_key = chunk.last_key
        if state is not None:  # the results are written: now the chunk counts as done
            await asyncio.to_thread(state.commit, cp, rejects)
        metrics = self.service.dataplane.metrics
        for outcome, n in (("read", read), ("written", written), ("rejected", len(rejects))):
            if n:
                metrics.batch_rows.labels(self.pipeline.name, outcome).inc(n)
        if self.reporter is not None:
            if self._counting is not None:
                self.reporter.start(await self._counting, cp.read - read, self._started)
                self._counting = None
            self.reporter.advance(read)

    async def _count(self, resume: Resume, done: int) -> int | None:
        try:
            total = await asyncio.to_thread(self.source.count, resume)
        except Exception as exc:  # the job goes on without a total
            log.warning("could not count the rows of batch job %s: %s", self.job_id, exc)
            return None
        return None if total is None else total + done

    async def _chunks(self, resume: Resume) -> AsyncIterator[tuple[Chunk, Frame]]:
        """Chunks read ahead of the one being scored, two at most, in order; their
        lookups run at once (each mostly waits on the database)."""
        queue: asyncio.Queue[tuple[Chunk, Frame | asyncio.Future[Frame]] | BaseException
                             | None] = asyncio.Queue(1)
        lookups: set[asyncio.Future[Frame]] = set()
        retriever = self.pipeline.retriever

        async def produce() -> None:
            chunks = iter(self.source.chunks(self.options.chunk_size, resume))
            try:
                while (chunk := await self._in_thread(next, chunks, None)) is not None:
                    if not self.source.lookup:
                        await queue.put((chunk, chunk.frame))
                        continue
                    assert retriever is not None
                    found = asyncio.ensure_future(retriever.get(chunk.frame.keys))
                    lookups.add(found)
                    found.add_done_callback(lookups.discard)
                    await queue.put((chunk, found))
                await queue.put(None)
            except Exception as exc:
                await queue.put(exc)
            finally:
                await self._in_thread(_close_iterator, chunks)

        task = asyncio.create_task(produce(), name="batch-reader")
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                chunk, found = item
                yield chunk, found if isinstance(found, Frame) else await found
        finally:
            task.cancel()
            pending = list(lookups)
            for lookup in pending:
                lookup.cancel()
            await asyncio.gather(task, *pending, return_exceptions=True)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        # one thread for the source: its connection and cursor never change threads
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _state(self) -> JobState:
        return job_state(self.service, self.pipeline.name, self.job_id,
                         self.options.rejects_file, self.home)


def _close_iterator(it: Any) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:  # the error that stopped the job matters more
        log.warning("could not mark the batch job as failed: %s", exc)
