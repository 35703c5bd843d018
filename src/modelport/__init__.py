"""modelport: put trained machine-learning models into production as microservices.

The public API: what building and running a service takes. Names beyond the registry's
load on first use, so `import modelport` loads no web framework, broker client or
pipeline component, and starts nothing. These packages are public too, their
`__all__` part of the API: `modelport.pipeline` (components), `modelport.streams`
(brokers, the stream worker and runner), `modelport.jobs` (batch jobs, the scheduler,
reports), `modelport.server` (the app, its JSON responses, running it) and
`modelport.flavors` (models of our own kinds, e.g. `FactorModel`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelport.errors import (
    ConfigError,
    InvalidInput,
    ModelportError,
    NotFound,
    NotReady,
    Overloaded,
)
from modelport.lazy import lazy_exports
from modelport.model import Model
from modelport.registry import ModelVersion, Registry
from modelport.settings import Settings
from modelport.signature import Signature

if TYPE_CHECKING:
    from modelport.config import RetrainConfig, ServiceConfig, load_config
    from modelport.dataplane import ModelConfig
    from modelport.logs import configure_logging
    from modelport.monitoring.metrics import Metrics
    from modelport.pipeline import Frame, Pipeline, PipelineConfig, Retriever, Writer
    from modelport.server import create_app
    from modelport.service import Service

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "modelport.dataplane",
    "Metrics": "modelport.monitoring.metrics",
    "configure_logging": "modelport.logs",
    "Frame": "modelport.pipeline",
    "Pipeline": "modelport.pipeline",
    "PipelineConfig": "modelport.pipeline",
    "Retriever": "modelport.pipeline",
    "Writer": "modelport.pipeline",
    "Service": "modelport.service",
    "ServiceConfig": "modelport.config",
    "RetrainConfig": "modelport.config",
    "load_config": "modelport.config",
    "create_app": "modelport.server",  # the web framework loads with it
}


__getattr__ = lazy_exports(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ConfigError",
    "Frame",
    "InvalidInput",
    "Metrics",
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
    "RetrainConfig",
    "Retriever",
    "Service",
    "ServiceConfig",
    "Settings",
    "Signature",
    "Writer",
    "configure_logging",
    "create_app",
    "load_config",
]
