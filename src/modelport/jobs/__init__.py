"""Jobs: batch runs of a pipeline over a query or a file, the scheduler, reports.

Public: `__all__`; the report's functions load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelport.jobs.batch import EXIT_REJECTED, BatchJob, BatchOptions, BatchResult, source_for
from modelport.jobs.scheduler import Scheduler, add_pipeline_batches
from modelport.jobs.sources import FileRows, KeyQuery, Source

if TYPE_CHECKING:
    from modelport.jobs.report import generate, report_job, window

_LAZY = {"generate": "modelport.jobs.report", "report_job": "modelport.jobs.report",
         "window": "modelport.jobs.report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modelport.jobs' has no attribute {name!r}")


__all__ = [
    "EXIT_REJECTED",
    "BatchJob",
    "BatchOptions",
    "BatchResult",
    "FileRows",
    "KeyQuery",
    "Scheduler",
    "Source",
    "add_pipeline_batches",
    "generate",
    "report_job",
    "source_for",
    "window",
]
