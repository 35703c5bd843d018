"""A service: the data plane and the pipelines one `modelport.yaml` describes.

`Service` is the one composition root: the registry, the data plane (its metrics and
prediction log), the pipelines. Every trigger (the HTTP server, a stream runner, batch
jobs, the scheduler) runs on one, and `cli/` only loads it::

    async with Service(settings, config) as service:  # loads the models
        ...                                             # stopped (drained) on exit
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from modelport.config import ServiceConfig
from modelport.dataplane import DataPlane
from modelport.errors import ConfigError, ModelportError, NotFound
from modelport.monitoring.metrics import Metrics
from modelport.monitoring.predlog import PredictionLog
from modelport.pipeline import Pipeline
from modelport.registry import Registry
from modelport.settings import Settings

log = logging.getLogger("modelport.service")


class Service:
    """Builds and owns what a service runs; every trigger starts from one.

    `registry`: by default the one `settings` point at, opened here and closed by
    `stop()`; one handed in stays the caller's to close. `follow`: once started, follow
    alias moves in the registry (a batch pins the versions it started with instead).
    """

    def __init__(self, settings: Settings, config: ServiceConfig | None = None,
                 registry: Registry | None = None, *,
                 pipelines: dict[str, Pipeline] | None = None, follow: bool = True) -> None:
        self.settings = settings
        self.config = config = config if config is not None else ServiceConfig()
        self.follow = follow
        self._owns_registry = registry is None
        self.registry = registry if registry is not None else Registry(settings=settings)
        self._settled = False
        try:
            served = {p.name: config.model_for(p.model).served_name for p in config.pipelines}
            self.dataplane = DataPlane(self.registry, settings, config.models,
                                       prediction_log=PredictionLog.from_settings(settings))
            self.pipelines: dict[str, Pipeline] = {
                p.name: Pipeline.from_config(p, self.dataplane, model_name=served[p.name])
                for p in config.pipelines
            }
        except BaseException:
            self._close_registry()
            raise
        self.pipelines.update(pipelines or {})

    @property
    def metrics(self) -> Metrics:
        """The service's Prometheus metrics (every trigger's, one registry)."""
        return self.dataplane.metrics

    @property
    def prediction_log(self) -> PredictionLog | None:
        return self.dataplane.prediction_log

    @property
    def started(self) -> bool:
        return self.dataplane.started

    def add(self, pipeline: Pipeline) -> Pipeline:
        """Add a pipeline built in code (over `self.dataplane`) beside the configured
        ones; it is started and stopped with them. Add before `start()`."""
        if pipeline.name in self.pipelines:
            raise ConfigError(f"two pipelines are named {pipeline.name!r}")
        self.pipelines[pipeline.name] = pipeline
        return pipeline

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self.pipelines[name]
        except KeyError:
            raise NotFound(f"no pipeline named {name!r}") from None

    async def start(self, *, follow: bool | None = None, strict: bool = False) -> None:
        """Load the models and open the pipelines' connections.

        `strict` is the check of a command at its start: a model that does not exist or
        load, or a pipeline whose services or tables are not there, raises a
        `ConfigError` naming it (after stopping what had started). Otherwise each is
        logged, reported not ready, and retried. `follow` overrides the service's."""
        await self.dataplane.start(follow=self.follow if follow is None else follow,
                                   quiet=strict)
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
        """Drain the models (requests in flight are answered) and close the pipelines;
        then the registry, when the service opened it."""
        try:
            # the shadow sides of HTTP runs still under way need the shadow's model
            await asyncio.gather(*(p.drain() for p in self.pipelines.values()),
                                 return_exceptions=True)
            await self.dataplane.stop()
            await asyncio.gather(*(p.close() for p in self.pipelines.values()),
                                 return_exceptions=True)
        finally:
            self._close_registry()

    def settle(self) -> None:
        """Once everything is loaded (models, libraries, a trigger's own connections):
        move what lives as long as the process out of the garbage collector's sight, or
        every full collection rescans it and stalls the event loop. Once per service;
        the triggers call it when they have started."""
        if self._settled:
            return
        self._settled = True
        gc.collect()
        gc.freeze()

    async def __aenter__(self) -> Service:
        if not self.started:
            await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def _close_registry(self) -> None:
        if self._owns_registry:
            self.registry.close()


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
