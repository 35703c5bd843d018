"""modelport: put trained machine-learning models into production as microservices.

The public API: what building and running a service takes. Names beyond the registry's
load on first use, so `import modelport` loads no web framework, broker client or
pipeline component, and starts nothing. `modelport.pipeline` (components) and
`modelport.streams` (brokers, the stream worker and runner) are public packages too:
their `__all__` is part of the API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelport.errors import (
    ConfigError,
    InvalidInput,
    ModelportError,
    NotFound,
    NotReady,
    Overloaded,
)
from modelport.model import Model
from modelport.registry import ModelVersion, Registry
from modelport.settings import Settings
from modelport.signature import Signature

if TYPE_CHECKING:
    from modelport.config import ServiceConfig
    from modelport.dataplane import ModelConfig
    from modelport.pipeline import Frame, Pipeline, PipelineConfig, Retriever, Writer
    from modelport.server import create_app
    from modelport.service import Service

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "modelport.dataplane",
    "Frame": "modelport.pipeline",
    "Pipeline": "modelport.pipeline",
    "PipelineConfig": "modelport.pipeline",
    "Retriever": "modelport.pipeline",
    "Writer": "modelport.pipeline",
    "Service": "modelport.service",
    "ServiceConfig": "modelport.config",
    "create_app": "modelport.server",  # the web framework loads with it
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'modelport' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ConfigError",
    "Frame",
    "InvalidInput",
    "Model",
    "ModelConfig",
    "ModelVersion",
    "ModelportError",
    "NotFound",
    "NotReady",
    "Overloaded",
    "Pipeline",
    "PipelineConfig",
    "Registry",
    "Retriever",
    "Service",
    "ServiceConfig",
    "Settings",
    "Signature",
    "Writer",
    "create_app",
]
