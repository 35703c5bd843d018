"""A pipeline's batch job, from the service's configuration: the source it reads
(`source_for`: `--keys`, `--input` or the pipeline's `keys:`), where its checkpoints
and rejects are kept (`job_state`), and whether the two fit (`check_lookup`); the
same for either engine."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from modelport.config import PipelineEntry
from modelport.errors import ConfigError
from modelport.jobs.query import KeyQuery
from modelport.jobs.sources import FileRows, Source
from modelport.jobs.state import JobState
from modelport.pipeline import Pipeline, PipelineConfig
from modelport.service import Service


def check_lookup(source: Source, pipe: Pipeline) -> None:
    """A source of keys needs the pipeline's retriever to look the rows up."""
    if source.lookup and pipe.retriever is None:
        raise ConfigError(f"pipeline {pipe.name!r} has no retriever to look the keys "
                          "up with; select the rows' columns in the query, or give "
                          "rows with --input")


def job_state(service: Service, pipeline: str, job_id: str, rejects_file: Path | None,
              home: Path) -> JobState:
    """Checkpoints in the writer's database (with a rejects table) or the registry's."""
    target = sql_target(service, pipeline)
    if target is not None:
        url, table = target
        return JobState(url, rejects_table=f"{table}_rejects", rejects_file=rejects_file)
    default = home / "batch" / f"{job_id}.rejects.jsonl"
    return JobState(service.settings.resolved_registry_url,
                    rejects_file=rejects_file or default)


def sql_target(service: Service, pipeline: str) -> tuple[str, str] | None:
    """The SQL database and table a pipeline writes to, if it writes to one."""
    config = _config(service, pipeline)
    writer = service.pipeline(pipeline).writer
    if config is not None and config.writer is not None and config.writer.type == "sql":
        url, table = config.writer.options.get("url"), config.writer.options.get("table")
    else:  # an injected writer that says where it writes
        url, table = getattr(writer, "url", None), getattr(writer, "table", None)
    if isinstance(url, str) and isinstance(table, str) and _is_sql(url):
        return url, table
    return None


def _is_sql(url: str) -> bool:
    try:
        return sa.make_url(url).get_backend_name() in ("sqlite", "postgresql", "mysql",
                                                       "mariadb", "mssql", "oracle")
    except sa.exc.ArgumentError:
        return False


def source_for(service: Service, pipeline: str, *, keys: str | None = None,
               input_file: Path | None = None, keys_url: str | None = None,
               key: str | None = None) -> Source:
    """The source a batch run reads: `--keys` / `--input`, else the pipeline's `keys:`
    (a query, or the path of a .csv/.parquet file of rows)."""
    service.pipeline(pipeline)  # NotFound for an unknown name, before anything else
    config = _config(service, pipeline)
    if keys is not None and input_file is not None:
        raise ConfigError("give either --keys or --input, not both")
    if keys is None and input_file is None:
        declared = config.keys if config is not None else None
        if not declared:
            raise ConfigError(f"pipeline {pipeline!r}: give the keys to score (--keys 'SELECT "
                              "id FROM …') or rows (--input FILE), or set keys: in its config")
        if declared.strip().lower().endswith((".csv", ".parquet", ".pq")):
            input_file = Path(declared.strip())
        else:
            keys = declared
    if input_file is not None:
        return FileRows(input_file, key or _key_column(config))
    assert keys is not None
    url = keys_url or _retriever_url(config)
    if url is None:
        raise ConfigError(f"pipeline {pipeline!r} has no SQL retriever to run the keys query "
                          "on; give its database with --keys-url")
    return KeyQuery(url, keys)


def _config(service: Service, pipeline: str) -> PipelineEntry | None:
    """The pipeline's configuration (none for a pipeline handed to the service built)."""
    return next((p for p in service.config.pipelines if p.name == pipeline), None)


def _retriever_url(config: PipelineConfig | None) -> str | None:
    if config is None or config.retriever is None:
        return None
    url = config.retriever.options.get("url")
    return url if isinstance(url, str) and _is_sql(url) else None


def _key_column(config: PipelineConfig | None) -> str:
    """The key column of an input file: the writer's key, else the retriever's, else id."""
    for component in (config.writer, config.retriever) if config else ():
        if component is not None and isinstance(component.options.get("key"), str):
            return str(component.options["key"])
    return "id"

