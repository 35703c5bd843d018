"""Jobs: batch runs of a pipeline over a query or a file, the scheduler, reports,
retraining.

Public: `__all__`; the report's functions load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelport.jobs.batch import BatchJob
from modelport.jobs.query import KeyQuery
from modelport.jobs.resolve import source_for
from modelport.jobs.retrain import (
    RetrainContext,
    Retrainer,
    RetrainOutcome,
    Trained,
    TrainerError,
    add_retrain_jobs,
)
from modelport.jobs.run import EXIT_REJECTED, BatchOptions, BatchResult
from modelport.jobs.scheduler import Scheduler, add_pipeline_batches
from modelport.jobs.sources import FileRows, Source
from modelport.lazy import lazy_exports

if TYPE_CHECKING:
    from modelport.jobs.report import generate, report_job, window

_LAZY = {"generate": "modelport.jobs.report", "report_job": "modelport.jobs.report",
         "window": "modelport.jobs.report"}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "EXIT_REJECTED",
    "BatchJob",
    "BatchOptions",
    "BatchResult",
    "FileRows",
    "KeyQuery",
    "RetrainContext",
    "RetrainOutcome",
    "Retrainer",
    "Scheduler",
    "Source",
    "Trained",
    "TrainerError",
    "add_pipeline_batches",
    "add_retrain_jobs",
    "generate",
    "report_job",
    "source_for",
    "window",
]
