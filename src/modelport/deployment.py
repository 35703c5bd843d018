"""What the data plane keeps per served model: its configuration (`ModelConfig`, an
entry under `models:` in modelport.yaml), the loaded version with its batcher
(`Deployment`, built and smoke-tested by `deploy`), the state of a served name
(`Endpoint`), and the worker processes a GIL-bound model runs in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Set as AbstractSet
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelport.batching import AdaptiveBatcher, Infer, Predict
from modelport.errors import ModelOutputError, ModelportError
from modelport.model import Model
from modelport.outputs import Outputs
from modelport.placement import Placement, choose, configured
from modelport.registry import ModelVersion, parse_ref
from modelport.settings import BatchingSettings
from modelport.signature import Batch
from modelport.traffic import CanaryPolicy, ShadowPolicy, Splitter, TrafficPolicy

if TYPE_CHECKING:
    from modelport.monitoring.metrics import Metrics
    from modelport.registry import Registry


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
    """N > 0 runs the model in N worker processes (GIL-bound models); 0: `on_loop` says."""
    on_loop: bool | Literal["auto"] = "auto"
    """Where the model runs in this process (see modelport.placement): `auto` times it
    at load and runs it on the event loop when a call at one row and at the largest
    batch takes under a millisecond, in a thread otherwise; `true` on the loop, `false`
    in a thread, whatever the timing."""
    batching: BatchingSettings | None = None
    shadow: ShadowPolicy | None = None
    """`NAME@ALIAS` or `{ref, fraction, tolerance, timeout_s}`: also scores calls, unseen."""
    canary: CanaryPolicy | None = None
    """`{ref, weight, key}`: answers `weight` percent of the calls (see modelport.traffic)."""

    @field_validator("on_loop", mode="before")
    @classmethod
    def _true_false_or_auto(cls, value: object) -> object:
        # one message for a bad value, not one per member of the union
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if value == "auto" or isinstance(value, bool):
            return value
        raise ValueError(f"expected true, false or auto, got {value!r}")

    @model_validator(mode="after")
    def _one_place_to_run(self) -> ModelConfig:
        if self.on_loop is True and self.workers:
            raise ValueError("a model runs on the event loop (on_loop: true) or in "
                             "worker processes (workers), not both")
        return self

    @property
    def served_name(self) -> str:
        return self.name or parse_ref(self.ref)[0]

    @property
    def traffic(self) -> TrafficPolicy:
        return TrafficPolicy(shadow=self.shadow, canary=self.canary)


@dataclass
class Deployment:
    """One loaded model version with its batcher (and worker processes, if any)."""

    model: Model
    batcher: AdaptiveBatcher
    placement: Placement
    executor: Executor | None = None
    loaded_at: float = field(default_factory=time.time)
    served: str = ""
    """The name it is served under (whose traffic policy applies)."""
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
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    splitter: Splitter = field(default_factory=Splitter)

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


async def deploy(config: ModelConfig, record: ModelVersion, registry: Registry,
                 metrics: Metrics, default_batching: BatchingSettings) -> Deployment:
    """Load `record`'s version, place it, start its batcher and smoke-test it on its
    signature's sample; a failure raises, with nothing left running."""
    path = await asyncio.to_thread(registry.artifacts.fetch, record.sha256,
                                   registry.cache_dir)
    model = Model(record, path, trusted=config.trusted)
    await asyncio.to_thread(model.load)
    batching = config.batching or default_batching
    max_batch_size = batching.max_batch_size if batching.enabled else 1
    placement = configured(config.on_loop, config.workers)
    if placement is None:  # on_loop: auto: timed on the sample, in a thread
        try:
            placement = await asyncio.to_thread(choose, model, max_batch_size)
        except Exception as exc:
            raise ModelportError(
                f"smoke test on the signature's sample failed: {exc}") from exc
    executor = process_pool(record, path, config) if placement.where == "process" \
        else None
    name = config.served_name
    outputs = Outputs.of(record.signature)

    def run(batch: Batch) -> Batch:
        # the union of what the batch's callers asked for (Deployment.submit)
        inputs, asked = outputs.untag(batch)
        try:
            if executor is None:
                return model.predict_batch(inputs, asked)
            return executor.submit(worker_predict, inputs, asked).result()
        except ModelOutputError:
            metrics.output_row_errors.labels(name, str(record.version)).inc()
            raise

    async def on_loop(batch: Batch) -> Batch:
        return run(batch)

    # a plain function runs on the batcher's own threads; a coroutine on the loop
    infer: Infer | Predict = on_loop if placement.where == "loop" else run

    def on_batch(rows: int, seconds: float) -> None:
        metrics.batch_size.labels(name, str(record.version)).observe(rows)

    batcher = AdaptiveBatcher(
        infer,
        max_batch_size=max_batch_size,
        max_delay_ms=batching.max_delay_ms if batching.enabled else 0,
        max_queue=batching.max_queue,
        concurrency=max(config.workers, 1),
        on_batch=on_batch,
    )
    batcher.start()
    deployment = Deployment(model, batcher, placement, executor, served=name)
    try:  # smoke test through the same path requests take
        if model.signature.sample:
            await deployment.submit(model.signature.sample_batch(), timeout=60)
    except Exception as exc:
        await deployment.close()
        raise ModelportError(f"smoke test on the signature's sample failed: {exc}") from exc
    return deployment


# --- worker processes -----------------------------------------------------------------

_worker_model: Model | None = None


def _worker_init(record_json: str, path: str, trusted: bool) -> None:
    global _worker_model
    record = ModelVersion.model_validate_json(record_json)
    _worker_model = Model(record, Path(path), trusted=trusted).load()


def worker_predict(batch: Batch, outputs: AbstractSet[str] | None = None) -> Batch:
    assert _worker_model is not None, "worker process has no model"
    return _worker_model.predict_batch(batch, outputs)


def process_pool(record: ModelVersion, path: Path, config: ModelConfig) -> Executor:
    # spawn, not fork: the server process has threads (and an event loop) by now
    return ProcessPoolExecutor(
        max_workers=config.workers, mp_context=get_context("spawn"),
        initializer=_worker_init, initargs=(record.model_dump_json(), str(path), config.trusted),
    )
