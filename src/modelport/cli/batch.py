"""`modelport batch`: score a query or a file through a pipeline, resumably.

Exit codes: 0 every row was scored and written; 3 some rows were rejected (the
summary says how many and where they are); 1 the job could not run or failed (rerun
the same command to resume it); 2 bad usage; 130 interrupted (resumable too).
"""

from __future__ import annotations

import asyncio
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

from modelport.cli.context import CliState, state
from modelport.config import ServiceConfig, load_config
from modelport.errors import NotFound
from modelport.jobs.batch import BatchJob, BatchOptions, BatchResult, source_for
from modelport.service import Service
from modelport.settings import environment


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
) -> int:
    """Score a query's keys or rows, or a file's rows, through a pipeline, in resumable
    chunks."""
    cli = state(ctx)
    service_config = _only(load_config(config, environment()), pipeline, config)
    options = BatchOptions(
        chunk_size=chunk_size or service_config.pipelines[0].chunk_size, dry_run=dry_run,
        job_id=job_id, rejects_file=rejects, fresh=fresh)
    with cli.registry() as reg:
        service = Service(cli.settings, service_config, reg)
        source = source_for(service, pipeline, keys=keys, input_file=input_file,
                            keys_url=keys_url, key=key)
        source.check()  # bad SQL or a bad file fails here, before any model loads
        progress = RichReporter(cli.err)
        job = BatchJob(service, pipeline, source, options, reporter=progress)
        try:
            result = asyncio.run(_run(service, job, progress))
        except KeyboardInterrupt:
            cli.err.print(f"interrupted: run the same command again to resume job {job.job_id}")
            return 130
    summarize(cli, result)
    return result.exit_code


async def _run(service: Service, job: BatchJob, progress: RichReporter) -> BatchResult:
    # a batch pins the versions it started with; what cannot run is said before a row
    await service.start(follow=False, strict=True)
    try:
        with progress:
            return await job.run()
    finally:
        await service.stop()


def _only(config: ServiceConfig, pipeline: str, path: Path) -> ServiceConfig:
    """The service with just this pipeline and its model (load nothing else)."""
    wanted = next((p for p in config.pipelines if p.name == pipeline), None)
    if wanted is None:
        names = ", ".join(p.name for p in config.pipelines) or "none"
        raise NotFound(f"no pipeline named {pipeline!r} in {path} (pipelines: {names})")
    return config.model_copy(update={
        "pipelines": [wanted], "models": [m for m in config.models if m.ref == wanted.model]})


def summarize(cli: CliState, result: BatchResult) -> None:
    out = cli.out
    what = "dry run" if result.dry_run else "done"
    out.print(Text(f"batch job {result.job_id} (pipeline {result.pipeline}): {what}",
                   style="bold"))
    resumed = f" (resumed after {result.resumed_after:,})" if result.resumed_after else ""
    out.print(f"  read      {result.read:>12,} rows{resumed}", highlight=False)
    written = "would be written" if result.dry_run else "written"
    out.print(f"  {written:<9} {result.written:>12,} rows", highlight=False)
    where = f" → {result.rejects_to}" if result.rejected and result.rejects_to else ""
    out.print(Text(f"  rejected  {result.rejected:>12,} rows{where}",
                   style="yellow" if result.rejected else ""))
    for reason, n in list(result.reasons.items())[:5]:
        out.print(Text(f"            {n:>10,} x {reason}", style="yellow"))
    out.print(f"  time      {result.seconds:>12.1f} s  ({result.rate:,.0f} rows/s)",
              highlight=False)
    if result.exit_code:
        total = max(result.total_rejected, result.rejected)
        cli.err.print(Text(f"warning: {total:,} rows rejected by this job; exit code "
                           f"{result.exit_code}", style="yellow"))


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "? rows/s", style="cyan")


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

    def start(self, total: int | None, done: int) -> None:
        if done:
            self.progress.console.print(f"resuming after {done:,} committed rows")
        self.task = self.progress.add_task("scoring", total=total, completed=done)

    def advance(self, rows: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, rows)
