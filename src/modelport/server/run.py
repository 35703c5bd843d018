"""Run a server: what `modelport serve` calls."""

from __future__ import annotations

import logging
import math

import uvicorn

from modelport.config import ServiceConfig
from modelport.logs import configure_logging
from modelport.registry import Registry
from modelport.server.app import create_app
from modelport.service import Service
from modelport.settings import Settings

log = logging.getLogger("modelport.server")


def serve(settings: Settings, config: ServiceConfig) -> None:
    """Serve `config.models` until SIGINT/SIGTERM; then drain in-flight requests."""
    configure_logging(json=settings.server.log_json, access_log=settings.server.access_log)
    registry = Registry(settings=settings)
    service = Service(settings, config, registry)
    app = create_app(settings, service.dataplane, pipelines=service.pipelines)
    log.info("serving %s on http://%s:%s", ", ".join(m.ref for m in service.config.models),
             settings.server.host, settings.server.port)
    try:
        uvicorn.run(
            app,
            host=settings.server.host,
            port=settings.server.port,
            loop="uvloop",
            http="httptools",
            log_config=None,
            access_log=False,  # our RequestContext middleware writes the access log
            timeout_graceful_shutdown=math.ceil(settings.server.request_timeout_s),
            backlog=2048,
        )
    finally:
        registry.close()
