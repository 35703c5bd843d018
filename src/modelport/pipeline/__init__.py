"""Pipelines: `retriever → model → writer`, with components injected by configuration."""

from modelport.pipeline.base import Component, Frame, Key, Retriever, Writer
from modelport.pipeline.memory import MemoryRetriever, MemoryWriter
from modelport.pipeline.pipeline import Pipeline, PipelineConfig, Reject, Scored

__all__ = [
    "Component",
    "Frame",
    "Key",
    "MemoryRetriever",
    "MemoryWriter",
    "Pipeline",
    "PipelineConfig",
    "Reject",
    "Retriever",
    "Scored",
    "Writer",
]
