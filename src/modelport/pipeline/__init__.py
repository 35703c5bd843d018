"""Pipelines: `retriever → model → writer`, with components injected by configuration.

Public: `__all__`. The components over a backing service (SQL, Redis) load on first use,
with their client libraries. `SqlComponent` is the base of a SQL component of your own
(the engine's lifecycle, errors translated); `make_engine` makes an engine as they do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelport.lazy import lazy_exports
from modelport.pipeline.base import Component, Frame, Key, Retriever, Writer
from modelport.pipeline.memory import MemoryRetriever, MemoryWriter
from modelport.pipeline.pipeline import Pipeline, PipelineConfig, Reject, Scored

if TYPE_CHECKING:
    from modelport.connections.sql import make_engine
    from modelport.pipeline.redis import RedisRetriever, RedisWriter
    from modelport.pipeline.sql import SqlRetriever, SqlWriter
    from modelport.pipeline.sqlconn import SqlComponent

_LAZY = {
    "RedisRetriever": "modelport.pipeline.redis",
    "RedisWriter": "modelport.pipeline.redis",
    "SqlRetriever": "modelport.pipeline.sql",
    "SqlWriter": "modelport.pipeline.sql",
    "SqlComponent": "modelport.pipeline.sqlconn",
    "make_engine": "modelport.connections.sql",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "Component",
    "Frame",
    "Key",
    "MemoryRetriever",
    "MemoryWriter",
    "Pipeline",
    "PipelineConfig",
    "RedisRetriever",
    "RedisWriter",
    "Reject",
    "Retriever",
    "Scored",
    "SqlComponent",
    "SqlRetriever",
    "SqlWriter",
    "Writer",
    "make_engine",
]
