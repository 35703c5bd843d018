"""Jobs: batch runs of a pipeline over a query or a file, and the scheduler."""

from modelport.jobs.batch import EXIT_REJECTED, BatchJob, BatchOptions, BatchResult, source_for
from modelport.jobs.scheduler import Scheduler, add_pipeline_batches
from modelport.jobs.sources import FileRows, KeyQuery, Source

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
    "source_for",
]
