"""The data plane: the protocol-agnostic core every trigger calls.

It keeps the configured models loaded (one `Deployment` per served version, each with
its own adaptive batcher and executor), answers which version serves a name, runs
validated batches through the batcher, and follows the registry: when an alias moves,
the new version is loaded and smoke-tested on its signature's sample, swapped in
atomically, and only then is the old one drained and unloaded. A version that fails
to load or to pass its smoke test leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelport.batching import AdaptiveBatcher, Infer, Predict
from modelport.errors import (
    ModelNotFound,
    ModelOutputError,
    ModelportError,
    NotReady,
    VersionNotFound,
)
from modelport.model import Model
from modelport.monitoring.metrics import Metrics
from modelport.outputs import Outputs
from modelport.registry import ModelVersion, Registry, parse_ref
from modelport.settings import BatchingSettings, Settings
from modelport.signature import Batch

if TYPE_CHECKING:
    from modelport.monitoring.predlog import PredictionLog

log = logging.getLogger("modelport.dataplane")


class ModelConfig(BaseModel):
    """One model a service serves, as written under `models:` in modelport.yaml."""

    # a misspelt key is refused, naming it, rather than leaving a default silently
    model_config = ConfigDict(extra="forbid")

    ref: str
    """`name@alias` (follows the alias) or `name:version` (pinned)."""
    name: str | None = None
    """Name it is served under; default the registered name."""
    trusted: bool = False
    """Allow artifacts that run code when loaded (pickle, python flavor)."""
    workers: int = Field(0, ge=0)
    """0 runs the model in threads; N runs it in N worker processes (GIL-bound models)."""
    on_loop: bool = False
    """Call the model on the event loop rather than in a thread: for models that answer
    a batch in a fraction of a millisecond (a factor lookup, a small linear model), where
    handing each batch to a thread and back costs more CPU than the model. The loop
    waits for every batch: leave it off for anything slower."""
    batching: BatchingSettings | None = None

    @model_validator(mode="after")
    def _one_place_to_run(self) -> ModelConfig:
        if self.on_loop and self.workers:
            raise ValueError("a model runs on the event loop (on_loop) or in worker "
                             "processes (workers), not both")
        return self

    @property
    def served_name(self) -> str:
        return self.name or parse_ref(self.ref)[0]


@dataclass
class Deployment:
    """One loaded model version with its batcher (and worker processes, if any)."""

    model: Model
    batcher: AdaptiveBatcher
    executor: Executor | None = None
    loaded_at: float = field(default_factory=time.time)
    outputs: Outputs = field(init=False)

    def __post_init__(self) -> None:
        self.outputs = Outputs.of(self.model.signature)

    @property
    def version(self) -> int:
        return self.model.version

    async def submit(self, batch: Batch, asked: frozenset[str] | None = None, *,
                     timeout: float | None = None) -> Batch:
        """Queue `batch` for the model; answer the `asked` outputs (None: all) of it."""
        answer = await self.batcher.submit(self.outputs.tag(batch, asked), timeout=timeout)
        return self.outputs.keep(answer, asked)

    async def close(self) -> None:
        await self.batcher.close(drain=True)
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0
"""A version that failed to load is tried again after 1 s, 2 s, 4 s, … up to a minute."""


@dataclass
class Endpoint:
    """A served name: the deployment answering for it now, and what is wrong now."""

    config: ModelConfig
    current: Deployment | None = None
    error: str | None = None
    failed_version: int | None = None
    failures: int = 0
    retry_at: float = 0.0
    """Loop time before which a failed version is not tried again (unless forced)."""

    @property
    def ready(self) -> bool:
        return self.current is not None

    def failed(self, version: int | None, error: str, now: float) -> None:
        self.error, self.failed_version = error, version
        self.failures += 1
        self.retry_at = now + min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (self.failures - 1))

    def settled(self) -> None:
        """Nothing is wrong now: what failed before is no longer what is asked."""
        self.error, self.failed_version, self.failures, self.retry_at = None, None, 0, 0.0


class DataPlane:
    def __init__(self, registry: Registry, settings: Settings, models: list[ModelConfig],
                 metrics: Metrics | None = None,
                 prediction_log: PredictionLog | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics or Metrics(settings.prometheus_multiproc_dir)
        self.endpoints: dict[str, Endpoint] = {}
        for config in models:
            if config.served_name in self.endpoints:
                raise ModelportError(f"two models are served as {config.served_name!r}")
            self.endpoints[config.served_name] = Endpoint(config)
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # a server of nothing is never ready, but an application's own service (an
        # events API, a stream worker) may have no model to load: create_app says so
        self.ready_without_models = False
        # prediction log: every trigger's calls pass through predict(), so it is
        # recorded there, once; its background writer lives as long as the data plane
        self.prediction_log = prediction_log
        self.started = False

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, *, follow: bool = True, quiet: bool = False) -> None:
        """Load every model (failures are recorded, not raised) and start following.

        `quiet`: a failed load is not logged (the caller reports `load_errors()`)."""
        self.started = True
        if self.prediction_log is not None:
            await self.prediction_log.start(self.metrics)
        await asyncio.gather(*(self._refresh(ep, quiet=quiet)
                               for ep in self.endpoints.values()))
        if follow:
            self._poller = asyncio.create_task(self._follow(), name="registry-poller")

    def load_errors(self) -> list[str]:
        """What keeps a model from being served now, one line each."""
        return [ep.error or f"{ep.config.ref}: not loaded" for ep in self.endpoints.values()
                if not ep.ready]

    async def stop(self) -> None:
        self.started = False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await asyncio.gather(*(ep.current.close() for ep in self.endpoints.values()
                               if ep.current is not None))
        if self.prediction_log is not None:  # after the drain: its calls are logged too
            await self.prediction_log.stop()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.settings.server.poll_interval_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("registry poll failed; serving what is loaded")

    async def refresh(self, *, force: bool = False) -> None:
        """Check the registry once; redeploy every endpoint whose alias moved, and try a
        version that failed to load again once its backoff is over (at once: `force`)."""
        aliases = await asyncio.to_thread(self.registry.store.alias_map)
        now = asyncio.get_running_loop().time()
        for ep in self.endpoints.values():
            name, alias, version = parse_ref(ep.config.ref)
            target = aliases.get((name, alias)) if alias else version
            if target is None:
                if alias and ep.error is None:
                    ep.error = f"alias {name}@{alias} does not exist"
                continue
            current = ep.current.version if ep.current else None
            if target == current:
                ep.settled()  # e.g. the alias moved back from a version that failed
            elif force or target != ep.failed_version or now >= ep.retry_at:
                await self._refresh(ep, target)

    async def _refresh(self, ep: Endpoint, version: int | None = None, *,
                       quiet: bool = False) -> None:
        async with self._lock:
            record: ModelVersion | None = None
            try:
                record = await asyncio.to_thread(self._record, ep.config.ref, version)
                if ep.current is not None and ep.current.version == record.version:
                    return
                deployment = await self._deploy(ep.config, record)
            except Exception as exc:
                version = record.version if record is not None else version
                now = asyncio.get_running_loop().time()
                ep.failed(version, f"{ep.config.ref}"
                          f"{f' (version {version})' if version else ''}: {exc}", now)
                self.metrics.model_loads.labels(ep.config.served_name, "failed").inc()
                if not quiet:
                    log.error("model load failed, keeping the serving version: %s "
                              "(trying again in %gs)", ep.error, ep.retry_at - now)
                return
            old, ep.current = ep.current, deployment
            ep.settled()
            self.metrics.model_loads.labels(ep.config.served_name, "loaded").inc()
            self.metrics.served_version.labels(ep.config.served_name).set(record.version)
            log.info("serving %s as %s (was %s)", record.ref, ep.config.served_name,
                     old.version if old else None)
        if old is not None:
            await old.close()  # requests already queued there finish first

    def _record(self, ref: str, version: int | None) -> ModelVersion:
        if version is None:
            return self.registry.resolve(ref)
        return self.registry.get_version(parse_ref(ref)[0], version)

    async def _deploy(self, config: ModelConfig, record: ModelVersion) -> Deployment:
        path = await asyncio.to_thread(self.registry.artifacts.fetch, record.sha256,
                                       self.registry.cache_dir)
        model = Model(record, path, trusted=config.trusted)
        await asyncio.to_thread(model.load)
        executor = _process_pool(record, path, config) if config.workers else None
        batching = config.batching or self.settings.batching
        name = config.served_name
        outputs = Outputs.of(record.signature)

        def run(batch: Batch) -> Batch:
            # the union of what the batch's callers asked for (Deployment.submit)
            inputs, asked = outputs.untag(batch)
            try:
                if executor is None:
                    return model.predict_batch(inputs, asked)
                return executor.submit(_worker_predict, inputs, asked).result()
            except ModelOutputError:
                self.metrics.output_row_errors.labels(name, str(record.version)).inc()
                raise

        async def on_loop(batch: Batch) -> Batch:
            return run(batch)

        # a plain function runs on the batcher's own threads; a coroutine on the loop
        infer: Infer | Predict = on_loop if config.on_loop else run

        def on_batch(rows: int, seconds: float) -> None:
            self.metrics.batch_size.labels(name, str(record.version)).observe(rows)

        batcher = AdaptiveBatcher(
            infer,
            max_batch_size=batching.max_batch_size if batching.enabled else 1,
            max_delay_ms=batching.max_delay_ms if batching.enabled else 0,
            max_queue=batching.max_queue,
            concurrency=max(config.workers, 1),
            on_batch=on_batch,
        )
        batcher.start()
        deployment = Deployment(model, batcher, executor)
        try:  # smoke test through the same path requests take
            if model.signature.sample:
                await deployment.submit(model.signature.sample_batch(), timeout=60)
        except Exception as exc:
            await deployment.close()
            raise ModelportError(f"smoke test on the signature's sample failed: {exc}") from exc
        return deployment

    # --- serving --------------------------------------------------------------------

    def endpoint(self, name: str) -> Endpoint:
        try:
            return self.endpoints[name]
        except KeyError:
            raise ModelNotFound(f"model {name!r} is not served here") from None

    def deployment(self, name: str, version: int | str | None = None) -> Deployment:
        ep = self.endpoint(name)
        if ep.current is None:
            raise NotReady(f"model {name!r} is not loaded: {ep.error or 'loading'}")
        if version is not None and str(version) != str(ep.current.version):
            raise VersionNotFound(
                f"model {name!r} serves version {ep.current.version}, not {version}")
        return ep.current

    async def predict(self, deployment: Deployment, batch: Batch,
                      timeout: float | None = None, *, source: str = "direct",
                      request_id: str | None = None,
                      outputs: Sequence[str] | None = None) -> Batch:
        """Run a validated batch through the deployment's batcher.

        `outputs`: the names of the outputs to compute and answer (default: all the
        signature declares); an unknown name is a 400 before anything is queued.
        `source` (the route, or `pipeline:NAME`) and `request_id` label the call in
        the prediction log."""
        timeout = timeout or self.settings.server.request_timeout_s
        asked = deployment.outputs.ask(outputs)
        plog = self.prediction_log
        if plog is None:
            return await deployment.submit(batch, asked, timeout=timeout)
        # prediction log: count, time and sample the call; record() never waits
        record, started = deployment.model.record, time.perf_counter()
        try:
            answer = await deployment.submit(batch, asked, timeout=timeout)
        except Exception:
            plog.record(record.name, record.version, source, batch, None,
                        (time.perf_counter() - started) * 1000, request_id)
            raise
        plog.record(record.name, record.version, source, batch, answer,
                    (time.perf_counter() - started) * 1000, request_id)
        return answer

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        detail = {
            name: {"ready": ep.ready, "version": ep.current.version if ep.current else None,
                   "ref": ep.config.ref, **({"error": ep.error} if ep.error else {})}
            for name, ep in self.endpoints.items()
        }
        ready = (bool(self.endpoints) or self.ready_without_models) and all(
            ep.ready for ep in self.endpoints.values())
        return ready, detail


# --- worker processes -----------------------------------------------------------------

_worker_model: Model | None = None


def _worker_init(record_json: str, path: str, trusted: bool) -> None:
    global _worker_model
    record = ModelVersion.model_validate_json(record_json)
    _worker_model = Model(record, Path(path), trusted=trusted).load()


def _worker_predict(batch: Batch, outputs: AbstractSet[str] | None = None) -> Batch:
    assert _worker_model is not None, "worker process has no model"
    return _worker_model.predict_batch(batch, outputs)


def _process_pool(record: ModelVersion, path: Path, config: ModelConfig) -> Executor:
    # spawn, not fork: the server process has threads (and an event loop) by now
    return ProcessPoolExecutor(
        max_workers=config.workers, mp_context=get_context("spawn"),
        initializer=_worker_init, initargs=(record.model_dump_json(), str(path), config.trusted),
    )
