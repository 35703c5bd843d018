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
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.deployment import Deployment as Deployment
from modelport.deployment import Endpoint as Endpoint
from modelport.deployment import ModelConfig as ModelConfig
from modelport.deployment import deploy
from modelport.errors import Conflict, ModelNotFound, ModelportError, NotReady, VersionNotFound
from modelport.monitoring.livedrift import DriftWatch
from modelport.monitoring.metrics import Metrics
from modelport.registry import ModelVersion, Registry, parse_ref
from modelport.settings import Settings
from modelport.signature import Batch
from modelport.traffic import ShadowCall, ShadowRunner, Splitter, TrafficPolicy

if TYPE_CHECKING:
    from modelport.monitoring.predlog import PredictionLog
    from modelport.monitoring.quality import QualityWatch

log = logging.getLogger("modelport.dataplane")


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
            self.endpoints[config.served_name] = Endpoint(config, policy=config.traffic)
        # the models of traffic policies (shadows, canaries), by ref: loaded and
        # following their aliases like the served ones, but never served by name
        self.targets: dict[str, Endpoint] = {}
        for ep in self.endpoints.values():
            self._add_targets(ep)
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # a server of nothing is never ready, but an application's own service (an
        # events API, a stream worker) may have no model to load: create_app says so
        self.ready_without_models = False
        # prediction log: every trigger's calls pass through predict(), so it is
        # recorded there, once; its background writer lives as long as the data plane
        self.prediction_log = prediction_log
        # live drift of the served versions, from the log (started with the log)
        self.drift_watch: DriftWatch | None = None
        self.shadows = ShadowRunner(self.metrics, prediction_log)
        self.quality: QualityWatch | None = None  # live-quality gauges, with the log
        self.started = False

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, *, follow: bool = True, quiet: bool = False) -> None:
        """Load every model (failures are recorded, not raised) and start following.

        `quiet`: a failed load is not logged (the caller reports `load_errors()`)."""
        self.started = True
        if self.prediction_log is not None:
            await self.prediction_log.start(self.metrics)
            self.drift_watch = DriftWatch(self.prediction_log.store, self.metrics,
                                          self.served_versions, self.prediction_log.config)
            await self.drift_watch.start()
            if self.settings.monitoring.quality_interval_s > 0:
                # here, not at the top: worker processes import this module too
                from modelport.monitoring.feedback import FeedbackStore
                from modelport.monitoring.quality import QualityWatch

                # on the prediction log's store (its engine), as the drift watch
                self.quality = QualityWatch(
                    FeedbackStore(self.prediction_log.store), self.metrics,
                    self.served_versions,
                    interval_s=self.settings.monitoring.quality_interval_s,
                    window_s=self.settings.monitoring.quality_window_s)
                self.quality.start()
        self.shadows.start()
        await asyncio.gather(*(self._refresh(ep, quiet=quiet) for ep in self._all()))
        if follow:
            self._poller = asyncio.create_task(self._follow(), name="registry-poller")

    def load_errors(self) -> list[str]:
        """What keeps a model from being served now, one line each."""
        return [ep.error or f"{ep.config.ref}: not loaded" for ep in self._all()
                if not ep.ready]

    async def stop(self) -> None:
        self.started = False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.shadows.stop()  # what waits for a shadow is dropped, not drained
        await asyncio.gather(*(ep.current.close() for ep in self._all()
                               if ep.current is not None))
        if self.drift_watch is not None:
            await self.drift_watch.stop()
        if self.quality is not None:
            await self.quality.stop()
            self.quality = None
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
        for ep in self._all():
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
                deployment = await deploy(ep.config, record, self.registry, self.metrics,
                                          self.settings.batching)
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
            log.info("%s (served as %s) %s", record.ref, ep.config.served_name,
                     deployment.placement.describe())
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
                      keys: Sequence[Any] | None = None,
                      outputs: Sequence[str] | None = None) -> Batch:
        """Run a validated batch through the deployment's batcher.

        `outputs`: the names of the outputs to compute and answer (default: all the
        signature declares); an unknown name is a 400 before anything is queued.
        `source` (the route, or `pipeline:NAME`), `request_id` and the rows' `keys` (a
        pipeline's) label the call in the prediction log, where feedback finds it."""
        return (await self._predict(deployment, batch, timeout, source, request_id,
                                    keys, outputs))[0]

    async def _predict(self, deployment: Deployment, batch: Batch, timeout: float | None,
                       source: str, request_id: str | None,
                       keys: Sequence[Any] | None = None,
                       outputs: Sequence[str] | None = None
                       ) -> tuple[Batch, np.ndarray | None]:
        """The outputs, and the rows the prediction log kept of them."""
        timeout = timeout or self.settings.server.request_timeout_s
        asked = deployment.outputs.ask(outputs)
        plog = self.prediction_log
        if plog is None:
            return await deployment.submit(batch, asked, timeout=timeout), None
        # prediction log: count, time and sample the call; record() never waits
        record, started = deployment.model.record, time.perf_counter()
        try:
            answer = await deployment.submit(batch, asked, timeout=timeout)
        except Exception:
            plog.record(record.name, record.version, source, batch, None,
                        (time.perf_counter() - started) * 1000, request_id)
            raise
        rows = plog.record(record.name, record.version, source, batch, answer,
                           (time.perf_counter() - started) * 1000, request_id, keys=keys)
        return answer, rows

    async def answer(self, deployment: Deployment, batch: Batch,
                     timeout: float | None = None, *, source: str = "direct",
                     request_id: str | None = None,
                     headers: Mapping[str, str] | None = None,
                     keys: Sequence[Any] | None = None,
                     outputs: Sequence[str] | None = None,
                     shadow_to: Callable[[ShadowCall], None] | None = None
                     ) -> tuple[Batch, Deployment]:
        """`predict` under the served model's traffic policy: the outputs and the
        deployment that answered (the canary's, for its share of the calls); the shadow
        is handed the call once answered. Every trigger calls this.

        `headers`: the HTTP request's, for a canary keyed on a header; `keys`: the
        rows' (a pipeline's), logged for feedback by key; `outputs`: as `predict`;
        `shadow_to`: takes the shadow's call (when it is one of its `fraction`) instead
        of the background queue (a pipeline's `shadow_writer` scores it itself)."""
        ep = self.endpoints.get(deployment.served)
        policy = ep.policy if ep is not None else None
        if ep is None or policy is None or not (policy.shadow or policy.canary):
            return await self.predict(deployment, batch, timeout, source=source,
                                      request_id=request_id, keys=keys,
                                      outputs=outputs), deployment
        chosen, canary = deployment, policy.canary
        if canary is not None and (candidate := self.targets[canary.ref].current) \
                and ep.splitter.to_canary(canary, canary.key_of(batch, headers)):
            chosen = candidate
        # the shadow is compared with the primary: the canary's calls are not shadowed
        shadow = policy.shadow if chosen is deployment else None
        if shadow is not None and request_id is None:
            request_id = uuid.uuid4().hex  # pairs the two answers in the prediction log
        answer, rows = await self._predict(chosen, batch, timeout, source, request_id,
                                           keys, outputs)
        self.metrics.traffic_answers.labels(
            ep.config.served_name, str(chosen.version),
            "primary" if chosen is deployment else "canary").inc()
        if shadow is not None and (target := self.targets[shadow.ref].current) is not None:
            call = ShadowCall(ep.config.served_name, shadow, target, batch, answer,
                              source, request_id, rows)
            if shadow_to is None:
                self.shadows.offer(call)
            elif self.shadows.sampled(shadow):
                shadow_to(call)
        return answer, chosen

    # --- traffic policies -----------------------------------------------------------

    def _all(self) -> list[Endpoint]:
        return [*self.endpoints.values(), *self.targets.values()]

    def _add_targets(self, ep: Endpoint) -> list[Endpoint]:
        added = []
        for ref in ep.policy.refs:
            if ref not in self.targets:
                # in threads even when the primary runs on the loop: a slow shadow must
                # not hold the loop that answers the callers
                config = ModelConfig(ref=ref, name=ref, trusted=ep.config.trusted,
                                     batching=ep.config.batching, on_loop=False)
                added.append(self.targets.setdefault(ref, Endpoint(config)))
        return added

    async def set_traffic(self, name: str, policy: TrafficPolicy) -> None:
        """Replace a served model's traffic policy, live: its models are loaded first,
        and a policy whose model does not load is refused, the old one kept."""
        ep = self.endpoint(name)
        added = self._add_targets(Endpoint(ep.config, policy=policy))
        await asyncio.gather(*(self._refresh(t, quiet=True) for t in added))
        failed = [t.error or t.config.ref for t in added if not t.ready]
        if not failed:
            ep.policy, ep.splitter = policy, Splitter()
        await self._drop_unused()
        if failed:
            raise Conflict(f"traffic policy of {name!r} refused: {failed[0]}")

    async def _drop_unused(self) -> None:
        used = {ref for ep in self.endpoints.values() for ref in ep.policy.refs}
        for ref in [r for r in self.targets if r not in used]:
            unused = self.targets.pop(ref)
            if unused.current is not None:
                await unused.current.close()

    def traffic(self) -> dict[str, Any]:
        """Each served model's policy, and what its models serve now."""
        return {name: {**ep.policy.model_dump(exclude_none=True),
                       "targets": {ref: self._state(self.targets[ref])
                                   for ref in ep.policy.refs}}
                for name, ep in self.endpoints.items()}

    def served_versions(self) -> list[ModelVersion]:
        """The registry records of the versions answering now, once each."""
        records = {(ep.current.model.record.name, ep.current.version): ep.current.model.record
                   for ep in self.endpoints.values() if ep.current is not None}
        return list(records.values())

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        detail = {name: self._state(ep) for name, ep in self.endpoints.items()}
        ready = (bool(self.endpoints) or self.ready_without_models) and all(
            ep.ready for ep in self.endpoints.values())
        return ready, detail

    @staticmethod
    def _state(ep: Endpoint) -> dict[str, Any]:
        return {"ready": ep.ready, "version": ep.current.version if ep.current else None,
                "ref": ep.config.ref, **({"error": ep.error} if ep.error else {}),
                **({"placement": ep.current.placement.as_json()} if ep.current else {})}
