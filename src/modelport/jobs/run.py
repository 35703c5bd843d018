"""A batch run, whichever engine runs it (the local `BatchJob` or the Ray one): what it
is given (`BatchOptions`, a `Reporter`), what it did (`BatchResult`), and how each piece
it commits (a chunk, a block) counts: the rows it set aside (`rejects_of`) and its
counts, into the result and the checkpoint (`tally`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from modelport.jobs.state import Checkpoint, RejectRow
from modelport.pipeline import Frame, Scored

EXIT_REJECTED = 3
"""`modelport batch` exits with this when rows were set aside (the output is partial)."""


@dataclass
class BatchOptions:
    chunk_size: int = 10_000
    dry_run: bool = False
    """Read, validate and score, but write nothing: no results, checkpoints, rejects."""
    job_id: str | None = None
    """Default: the pipeline's name and a hash of the pipeline and the source."""
    rejects_file: Path | None = None
    """Rejects as JSON lines here, instead of the `<writer table>_rejects` table."""
    fresh: bool = False
    """Start over even when an unfinished run of the job could be resumed."""


@dataclass
class BatchResult:
    """What one run did; `total_*` also count the chunks earlier runs committed."""

    job_id: str
    pipeline: str
    dry_run: bool
    read: int = 0
    written: int = 0
    rejected: int = 0
    seconds: float = 0.0
    resumed_after: int = 0
    """Rows an earlier, interrupted run had committed (0 when starting afresh)."""
    total_rejected: int = 0
    rejects_to: str = ""
    reasons: dict[str, int] = field(default_factory=dict)
    """Up to ten distinct reject reasons with their counts, for the summary."""

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_REJECTED if self.total_rejected or self.rejected else 0


class Reporter(Protocol):
    """Progress display (the CLI's Rich bar); the scheduler passes none."""

    def start(self, total: int | None, done: int, since: float) -> None:
        """The total (None: unknown), the rows earlier runs did, and when this run
        started (`time.perf_counter()`): the rate is this run's rows over its time, as
        `BatchResult.rate` is."""

    def advance(self, rows: int) -> None: ...


def tally(cp: Checkpoint, result: BatchResult, read: int, written: int,
          rejects: list[RejectRow]) -> None:
    """A committed piece's rows, into this run's result and the checkpoint."""
    result.read += read
    result.written += written
    result.rejected += len(rejects)
    for r in rejects:
        if r.reason in result.reasons or len(result.reasons) < 10:
            result.reasons[r.reason] = result.reasons.get(r.reason, 0) + 1
    cp.chunks += 1
    cp.read += read
    cp.written += written
    cp.rejected += len(rejects)


def rejects_of(asked: Frame, found: Frame, scored: Scored) -> list[RejectRow]:
    """A chunk's rows set aside: keys the retriever did not find, rows the pipeline
    rejected (with their input row)."""
    rejects = _missing(asked, found) + [RejectRow(r.key, r.reason, None)
                                        for r in scored.rejects]
    if scored.rejects:
        _add_payloads(rejects, found)
    return rejects


def _missing(asked: Frame, found: Frame) -> list[RejectRow]:
    if len(found) == len(asked) and found.keys == asked.keys:
        return []
    have = set(found.keys)
    return [RejectRow(k, f"no data for key {k!r}", None) for k in asked.keys if k not in have]


def _add_payloads(rejects: list[RejectRow], frame: Frame) -> None:
    """The input row of each rejected key, so it can be fixed and scored again."""
    where = {k: i for i, k in enumerate(frame.keys)}
    for r in rejects:
        i = where.get(r.key)
        if i is not None and r.payload is None:
            r.payload = frame.take([i]).records()[0]
