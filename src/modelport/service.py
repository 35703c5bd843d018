"""A service: the data plane and the pipelines one `modelport.yaml` describes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from modelport.config import ServiceConfig
from modelport.dataplane import DataPlane
from modelport.errors import ConfigError, ModelportError, NotFound
from modelport.monitoring.predlog import PredictionLog
from modelport.pipeline import Pipeline
from modelport.registry import Registry
from modelport.settings import Settings

log = logging.getLogger("modelport.service")


class Service:
    """Builds and owns what a service runs; every trigger starts from one."""

    def __init__(self, settings: Settings, config: ServiceConfig, registry: Registry, *,
                 pipelines: dict[str, Pipeline] | None = None) -> None:
        self.settings = settings
        self.config = config
        self.registry = registry
        served = {p.name: config.model_for(p.model).served_name for p in config.pipelines}
        self.dataplane = DataPlane(registry, settings, config.models,
                                   prediction_log=PredictionLog.from_settings(settings))
        self.pipelines: dict[str, Pipeline] = {
            p.name: Pipeline.from_config(p, self.dataplane, model_name=served[p.name])
            for p in config.pipelines
        }
        self.pipelines.update(pipelines or {})

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self.pipelines[name]
        except KeyError:
            raise NotFound(f"no pipeline named {name!r}") from None

    async def start(self, *, follow: bool = True, strict: bool = False) -> None:
        """Load the models and open the pipelines' connections.

        `strict` is the check of a command at its start: a model that does not exist or
        load, or a pipeline whose services or tables are not there, raises a
        `ConfigError` naming it (after stopping what had started). Otherwise each is
        logged, reported not ready, and retried."""
        await self.dataplane.start(follow=follow, quiet=strict)
        if not strict:
            await start_pipelines(self.pipelines.values())
            return
        try:
            if errors := self.dataplane.load_errors():
                raise ConfigError(f"model {errors[0]}")
            for pipeline in self.pipelines.values():
                try:
                    await pipeline.start()
                except ModelportError as exc:
                    raise ConfigError(f"pipeline {pipeline.name}: {exc.message}") from None
        except ConfigError:
            await self.stop()
            raise

    async def stop(self) -> None:
        await self.dataplane.stop()
        await asyncio.gather(*(p.close() for p in self.pipelines.values()),
                             return_exceptions=True)


async def start_pipelines(pipelines: Iterable[Pipeline]) -> None:
    """Open every pipeline's connections; a service that is down is logged, not fatal:
    its pipeline answers with clear errors (and reports not ready) until it is back."""
    for pipeline in pipelines:
        try:
            await pipeline.start()
        except ModelportError as exc:
            log.error("pipeline %s: %s", pipeline.name, exc.message)


async def pipeline_readiness(pipelines: Iterable[Pipeline]) -> tuple[bool, dict[str, Any]]:
    """Each pipeline's backing services, checked now (`SELECT 1`, `PING`, …)."""
    ready, detail = True, {}
    for pipeline in pipelines:
        try:
            for component in pipeline.components:
                await component.check()
        except ModelportError as exc:
            ready, detail[pipeline.name] = False, {"ready": False, "error": exc.message}
        else:
            detail[pipeline.name] = {"ready": True}
    return ready, detail
