"""`modelport batch`: score a query or a file through a pipeline, resumably.

Before it reads a row, the command checks its configuration: the source (the query
runs, the file is there), the model exists and loads, the writer's tables are there
(or `create: true`). What is wrong is one line and exit 1.

Exit codes: 0 every row was scored and written; 3 some rows were rejected (the
summary says how many and where they are); 1 the job could not run or failed (rerun
the same command to resume it); 2 bad usage; 130 interrupted (resumable too).
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from modelport.cli.context import CliState, load_service_config, state
from modelport.config import RayConfig, ServiceConfig
from modelport.errors import ConfigError
from modelport.jobs.batch import BatchJob
from modelport.jobs.resolve import source_for
from modelport.jobs.run import BatchOptions, BatchResult
from modelport.service import Service


class Engine(StrEnum):
    local = "local"
    ray = "ray"


def batch(
    ctx: typer.Context,
    pipeline: Annotated[str, typer.Argument(help="The pipeline (in --config) to run.")],
    config: Annotated[Path, typer.Option(
        "--config", "-c", help="The service's modelport.yaml.")] = Path("modelport.yaml"),
    keys: Annotated[str | None, typer.Option(
        help="SQL query whose first column is the key: alone, keys to look up with the "
             "pipeline's retriever; with more columns, the rows to score (no lookup). Run "
             "on the retriever's database; default the pipeline's keys: setting.",
        show_default=False)] = None,
    input_file: Annotated[Path | None, typer.Option(
        "--input", help="CSV or Parquet file of rows (key column + features) to score "
                        "instead of looking keys up.", show_default=False)] = None,
    keys_url: Annotated[str | None, typer.Option(
        help="Database to run --keys on (default: the retriever's).",
        show_default=False)] = None,
    key: Annotated[str | None, typer.Option(
        help="Key column of an --input file (default: the writer's key, or id).",
        show_default=False)] = None,
    chunk_size: Annotated[int | None, typer.Option(
        min=1, help="Rows per chunk: per lookup, model call, write and checkpoint "
                    "(default: the pipeline's chunk_size).", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Read, validate and score, but write nothing.")] = False,
    job_id: Annotated[str | None, typer.Option(
        help="Name of the job's checkpoint (default: a hash of pipeline and source).",
        show_default=False)] = None,
    rejects: Annotated[Path | None, typer.Option(
        help="Write rejected rows to this JSON-lines file instead of the "
             "<writer table>_rejects table.", show_default=False)] = None,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Start over instead of resuming an unfinished run.")] = False,
    engine: Annotated[Engine | None, typer.Option(
        help="Run here (local) or on Ray Data (ray; needs modelport[ray]); default the "
             "pipeline's engine: setting.", show_default=False)] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="The Ray cluster (ray://HOST:10001); default the pipeline's ray.address, "
             "else a local Ray.", show_default=False)] = None,
    actors: Annotated[int | None, typer.Option(
        min=1, help="Ray scoring actors (default: the pipeline's ray.actors).",
        show_default=False)] = None,
) -> int:
    """Score a query's keys or rows, or a file's rows, through a pipeline, in resumable
    chunks."""
    cli = state(ctx)
    service_config = load_service_config(config, pipeline=pipeline)
    entry = service_config.pipelines[0]
    options = BatchOptions(
        chunk_size=chunk_size or entry.chunk_size, dry_run=dry_run,
        job_id=job_id, rejects_file=rejects, fresh=fresh)
    if (engine.value if engine else entry.engine) == "ray":
        updates: dict[str, Any] = {"address": ray_address, "actors": actors}
        ray_config = entry.ray.model_copy(
            update={k: v for k, v in updates.items() if v is not None})
        return batch_on_ray(cli, service_config, pipeline, options, ray_config,
                            keys=keys, input_file=input_file, keys_url=keys_url, key=key)
    with cli.registry() as reg:
        service = Service(cli.settings, service_config, reg)
        source = source_for(service, pipeline, keys=keys, input_file=input_file,
                            keys_url=keys_url, key=key)
        source.check()  # bad SQL or a bad file fails here, before any model loads
        if not source.lookup:  # rows in hand: the retriever is not used, nor checked
            service.pipeline(pipeline).retriever = None
        progress = RichReporter(cli.err)
        job = BatchJob(service, pipeline, source, options, reporter=progress)
        try:
            result = asyncio.run(_run(service, job, progress))
        except KeyboardInterrupt:
            cli.err.print(f"interrupted: run the same command again to resume job {job.job_id}")
            return 130
    summarize(cli, result)
    return result.exit_code


def batch_on_ray(cli: CliState, service_config: ServiceConfig, pipeline: str,
                 options: BatchOptions, ray_config: RayConfig, **source: Any) -> int:
    """The same job on Ray Data: checked and pinned here, scored by the cluster."""
    try:
        from modelport.jobs.ray import RayBatchJob
    except ImportError as exc:
        raise ConfigError("--engine ray needs Ray: pip install 'modelport[ray]'") from exc
    with cli.registry() as reg:
        service = Service(cli.settings, service_config, reg)
        src = source_for(service, pipeline, **source)
        src.check()
        if not src.lookup:
            service.pipeline(pipeline).retriever = None
        pinned = asyncio.run(_check(service))
        progress = RichReporter(cli.err)
        job = RayBatchJob(service, pipeline, src, options, ray_config, pinned=pinned,
                          reporter=progress)
        try:
            with progress:
                result = job.run()
                progress.finish(result.rate)
        except KeyboardInterrupt:
            cli.err.print(f"interrupted: run the same command again to resume job {job.job_id}")
            return 130
    summarize(cli, result)
    return result.exit_code


async def _check(service: Service) -> dict[str, int]:
    """The model loads and the tables are there (one line each, before Ray starts);
    the versions loaded, which every actor then scores with."""
    from modelport.jobs.ray import pinned_versions

    await service.start(follow=False, strict=True)
    try:
        return pinned_versions(service)
    finally:
        await service.stop()


async def _run(service: Service, job: BatchJob, progress: RichReporter) -> BatchResult:
    # a batch pins the versions it started with; a model or table that is not there
    # is a ConfigError here, before the progress bar
    await service.start(follow=False, strict=True)
    try:
        with progress:
            result = await job.run()
            progress.finish(result.rate)
            return result
    finally:
        await service.stop()


LABEL = len("would be written")
"""The width of the summary's labels: the longest one."""


def plural(n: int, unit: str = "row") -> str:
    return unit if n == 1 else f"{unit}s"


def summarize(cli: CliState, result: BatchResult) -> None:
    out = cli.out
    what = "dry run" if result.dry_run else "done"
    out.print(Text(f"batch job {result.job_id} (pipeline {result.pipeline}): {what}",
                   style="bold"))

    def line(label: str, value: str, rest: str, style: str = "") -> None:
        out.print(Text(f"  {label:<{LABEL}} {value:>12} {rest}", style=style), soft_wrap=True)

    resumed = f" (resumed after {result.resumed_after:,})" if result.resumed_after else ""
    line("read", f"{result.read:,}", plural(result.read) + resumed)
    line("would be written" if result.dry_run else "written", f"{result.written:,}",
         plural(result.written))
    where = f" → {result.rejects_to}" if result.rejected and result.rejects_to else ""
    line("rejected", f"{result.rejected:,}", plural(result.rejected) + where,
         "yellow" if result.rejected else "")
    for reason, n in list(result.reasons.items())[:5]:
        # wrapped at spaces, under the reason's start: never mid-word (a column name,
        # a path); a word longer than the line overflows it whole
        first = f"  {'':<{LABEL}} {n:>12,} x "
        wrapped = textwrap.fill(reason, width=max(out.width, len(first) + 20),
                                initial_indent=first, subsequent_indent=" " * len(first),
                                break_long_words=False, break_on_hyphens=False)
        out.print(Text(wrapped, style="yellow"), soft_wrap=True)
    line("time", f"{result.seconds:.1f}", f"s    ({result.rate:,.0f} rows/s)")
    if result.exit_code:
        total = max(result.total_rejected, result.rejected)
        cli.err.print(Text(f"warning: {total:,} {plural(total)} rejected by this job; exit "
                           f"code {result.exit_code}", style="yellow"))


class RateColumn(ProgressColumn):
    """This run's rows over this run's time, the summary's rate (not Rich's speed of the
    last few updates, which for chunked work swings with each chunk)."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate")
        if rate is None and task.fields.get("since") is not None:
            seconds = time.perf_counter() - task.fields["since"]
            done = task.completed - task.fields["done"]
            rate = done / seconds if seconds > 0 and done else None
        return Text(f"{rate:,.0f} rows/s" if rate else "? rows/s", style="cyan")


class RichReporter:
    """The progress bar: rows done of the total (when known), rows/s and ETA."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            RateColumn(), TextColumn("eta"), TimeRemainingColumn(), TimeElapsedColumn(),
            console=console, transient=False)
        self.task: Any = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, total: int | None, done: int, since: float) -> None:
        if done:
            self.progress.console.print(f"resuming after {done:,} committed {plural(done)}")
        self.task = self.progress.add_task("scoring", total=total, completed=done,
                                           done=done, since=since)

    def finish(self, rate: float) -> None:
        """The final line shows the summary's rate."""
        if self.task is not None:
            self.progress.update(self.task, rate=rate)

    def advance(self, rows: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, rows)
