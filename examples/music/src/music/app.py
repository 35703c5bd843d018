"""The services as modelport servers: each role is routes and a lifespan mounted on
`modelport.server.create_app`, so every one of them has modelport's health and
readiness probes, metrics, request ids, access log and API-key guard.

- `recommender`: `GET /users/{id}/recommendations` (the pipeline), the web page and
  its JSON (`/api/…`), and `POST /pipelines/recommender/run`;
- `events`: `POST /listens`;
- `worker`: the realtime worker, as a background task of the process;
- `nightly`: the nightly batch and the daily report on their cron schedules (modelport's
  scheduler), as a background task.

`music up` runs all four in one process (or in each of `--workers N` processes sharing
the port, the nightly jobs in one of them); `music serve ROLE` runs one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator, Collection, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

from fastapi import FastAPI
from modelport import (
    ModelConfig,
    Retriever,
    Service,
    ServiceConfig,
    Settings,
    configure_logging,
    create_app,
)
from modelport.streams import Broker, StreamRunner
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from music import events, nightly, realtime, recommender, web
from music.store import Store
from music.system import System, single_threaded_blas

log = logging.getLogger("music.app")

ROLES = ("recommender", "events", "worker", "nightly")
T = TypeVar("T", Broker, Retriever)


def build_app(system: System, roles: Collection[str] = ROLES, *,
              settings: Settings | None = None, cron: str = nightly.DEFAULT_CRON,
              events_url: str = "") -> FastAPI:
    """A server for `roles`; `events_url` is where the web page posts listens (empty:
    this server, when it runs the events role too)."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {', '.join(sorted(unknown))}; roles: {ROLES}")
    single_threaded_blas()
    settings = settings or system.settings()
    # on the event loop: a request's fold-in and scoring cost less than the
    # thread hop they would otherwise pay for. No wait for company: requests that come
    # in while a batch runs form the next one anyway, and with 16 clients waiting on
    # their answers nobody else arrives, so the wait would be idle time
    recommender_model = ModelConfig(ref=system.model_ref, on_loop=True,
                                    batching=settings.batching.model_copy(
                                        update={"max_delay_ms": 0.0}))
    models = [recommender_model] if "recommender" in roles else []
    service = Service(settings, ServiceConfig(name="music", models=models))
    if "recommender" in roles:
        service.add(recommender.recommender_pipeline(system, service))
    routes: list[BaseRoute] = []
    if "recommender" in roles:
        routes += [*recommender.routes, *web.routes]
    if "events" in roles:
        routes += events.routes
    if "worker" in roles:
        routes += realtime.routes

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = Running(Store(system))
        app.state.store, app.state.system = running.store, system
        app.state.registry = service.registry
        app.state.events_url = events_url
        try:
            catalog = await asyncio.to_thread(running.store.catalog)
            if "recommender" in roles:
                topk = await running.open(system.topk_retriever())
                app.state.recommender = recommender.Recommender(
                    service.pipeline("recommender"), topk, catalog)
            if "events" in roles:
                publisher = await running.open(system.broker("events"))
                app.state.events = events.Events(running.store, publisher, system.stream,
                                                 catalog)
            if "worker" in roles:
                running.runner = realtime.realtime_runner(system, service)
                app.state.worker = running.runner.worker
                running.spawn(running.runner.run(), "realtime")
            if "nightly" in roles and running.hold(system.data_dir / "nightly.lock"):
                jobs = nightly.scheduler(system, settings, cron=cron,
                                         metrics=service.metrics)
                running.spawn(jobs.run_forever(), "nightly")
            elif "nightly" in roles:
                log.info("the nightly jobs run in another process of this system")
            yield
        finally:
            await running.stop()

    # the app starts the service (the models, the pipelines), then enters `lifespan`
    return create_app(service, extra_routes=routes, lifespan=lifespan)


class Running:
    """What a server's lifespan opened and started, to stop in reverse order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.runner: StreamRunner | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.opened: list[Any] = []
        self.locks: list[IO[bytes]] = []

    def hold(self, path: Path) -> bool:
        """Take the lock file `path` for as long as the server runs; False when another
        process holds it. `music up --workers N` runs N copies of the system, and one of
        them (whichever starts first) runs the nightly jobs."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): one process per system there
            return True
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self.locks.append(handle)  # closing it (or the process ending) releases it
        return True

    async def open(self, component: T) -> T:
        await component.start()
        self.opened.append(component)
        return component

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(_report)
        self.tasks.append(task)

    async def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()  # the batch in flight is written and acknowledged first
        for task in self.tasks:
            if task.get_name() != "realtime":
                task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for component in reversed(self.opened):
            with contextlib.suppress(Exception):
                await component.close()
        self.store.close()
        for handle in self.locks:
            handle.close()


def _report(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: %r", task.get_name(), task.exception(),
                  exc_info=task.exception())


@dataclass
class ServeSpec:
    """What `music serve ROLE` (or `music up --workers N`) runs, handed to worker
    processes as JSON."""

    system: System
    roles: list[str]
    events_url: str = ""
    json_logs: bool = True
    access_log: bool = True

    ENV: ClassVar[str] = "MUSIC_SERVE_SPEC"

    def export(self) -> None:
        # uvicorn starts each worker process with an import string and no arguments:
        # the environment is how the parent's options reach them
        fields = {f.name: getattr(self.system, f.name) for f in dataclasses.fields(System)
                  if f.name != "bus"}
        os.environ[self.ENV] = json.dumps({
            "system": {**fields, "home": str(self.system.home)}, "roles": self.roles,
            "events_url": self.events_url, "json_logs": self.json_logs,
            "access_log": self.access_log})

    @classmethod
    def from_env(cls) -> ServeSpec:
        raw = json.loads(os.environ[cls.ENV])
        system = System(**{**raw["system"], "home": Path(raw["system"]["home"])})
        return cls(system, raw["roles"], raw["events_url"], raw["json_logs"],
                   raw["access_log"])


def serve_app(spec: ServeSpec) -> ASGIApp:
    """The app of one `music serve` role (or of every role, for `music up`), logging
    configured."""
    configure_logging(json=spec.json_logs, access_log=spec.access_log)
    app: ASGIApp = build_app(spec.system, spec.roles, events_url=spec.events_url)
    return allow_page_origin(app) if spec.roles == ["events"] else app


def serve_app_from_env() -> ASGIApp:
    """uvicorn's factory in each process of `music serve --workers N`."""
    return serve_app(ServeSpec.from_env())


def allow_page_origin(app: ASGIApp) -> ASGIApp:
    """The events service on its own port: let the web page (another origin) post."""
    return CORSMiddleware(app, allow_origins=["*"], allow_methods=["POST"],
                          allow_headers=["content-type"])
