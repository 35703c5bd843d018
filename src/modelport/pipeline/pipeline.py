"""A pipeline: `retriever → (pre) → model → (post) → writer`, run by any trigger.

The model is reached through the data plane, so a pipeline shares the served model's
batcher (and its following of the registry). Columns the model does not take pass
through to the results, beside the model's outputs. Rows that do not fit the model's
signature are set aside with the reason, never dropped silently and never failing
their neighbours.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from modelport.dataplane import DataPlane
from modelport.datatypes import jsonable
from modelport.errors import ConfigError, InvalidInput, ModelOutputError
from modelport.pipeline.base import Frame, Key, Retriever, Writer
from modelport.pipeline.shadow import ShadowSide, SideCall
from modelport.signature import Signature
from modelport.traffic import ShadowCall

log = logging.getLogger("modelport.pipeline")

Step = Callable[[Frame], Frame]

# Built-in components by name; anything else is an import path `module:Class`.
RETRIEVERS: dict[str, str] = {
    "sql": "modelport.pipeline.sql:SqlRetriever",
    "redis": "modelport.pipeline.redis:RedisRetriever",
    "http": "modelport.pipeline.http:HttpRetriever",
    "file": "modelport.pipeline.files:FileRetriever",
    "memory": "modelport.pipeline.memory:MemoryRetriever",
}
WRITERS: dict[str, str] = {
    "sql": "modelport.pipeline.sql:SqlWriter",
    "redis": "modelport.pipeline.redis:RedisWriter",
    "file": "modelport.pipeline.files:FileWriter",
    "memory": "modelport.pipeline.memory:MemoryWriter",
    "stream": "modelport.streams.writer:StreamWriter",
}


class ComponentConfig(BaseModel):
    """`{type: sql, url: ..., table: ...}`: the type, and its constructor's arguments."""

    model_config = ConfigDict(extra="allow")

    type: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PipelineConfig(BaseModel):
    """What a pipeline is built from: its entry under `pipelines:` in modelport.yaml,
    less the options of the triggers that run it (`modelport.config.PipelineEntry`)."""

    # a misspelt key is refused, naming it, rather than leaving a default silently
    model_config = ConfigDict(extra="forbid")

    name: str
    model: str
    """The model, as `name@alias` or `name:version` (served by this service)."""
    retriever: ComponentConfig | None = None
    writer: ComponentConfig | None = None
    shadow_writer: ComponentConfig | None = None
    """Where the shadow's results go (a side table, a side sink), when the model has a
    shadow policy: the rows the primary scored, scored by the shadow too
    (`modelport.pipeline.shadow`). Idle while the model has no shadow."""
    pre: str | None = None
    """Import path of a `Frame -> Frame` step run before the model."""
    post: str | None = None
    """Import path of a `Frame -> Frame` step run on the results before the writer."""
    outputs: list[str] | None = None
    """Model outputs to keep (default: all)."""
    version_column: str | None = None
    """Add a column of this name holding the version of the model that scored each row
    (score tables and logs that must say which version produced a row)."""
    features: dict[str, list[str]] | None = None
    """For a model that takes an array (`input: FP64 [30]`): the columns that make up
    each row's array, in order, by input name. Without it, such a model's one input is
    made of all the rows' columns, in their order, when they are exactly as many."""


@dataclass
class Reject:
    key: Key
    reason: str


@dataclass
class Scored:
    """What scoring a frame gave: results for the rows that fit, and the rest."""

    results: Frame
    rejects: list[Reject] = field(default_factory=list)
    shadow: SideCall | None = None
    """The shadow's share of these rows, for the `shadow_writer` (`Pipeline.write`)."""


class Pipeline:
    """Components and a model, wired; build it with `from_config` or pass instances."""

    def __init__(self, name: str, model: str | None, dataplane: DataPlane, *,
                 retriever: Retriever | None = None, writer: Writer | None = None,
                 pre: Step | None = None, post: Step | None = None,
                 outputs: Sequence[str] | None = None,
                 version_column: str | None = None,
                 features: dict[str, list[str]] | None = None,
                 shadow_writer: Writer | None = None) -> None:
        self.name = name
        # the served name in the data plane; None for a pipeline that only moves data
        # (a stream folded into a store): its frames go from `pre` to the writer as they are
        self.model = model
        self.dataplane = dataplane
        self.retriever = retriever
        self.writer = writer
        self.pre = pre
        self.post = post
        self.outputs = list(outputs) if outputs else None
        self.version_column = version_column
        self.features = features or {}
        if shadow_writer is not None and model is None:
            raise ConfigError(f"pipeline {name!r}: a shadow_writer needs a model to shadow")
        self.shadow_writer = shadow_writer
        self._side = ShadowSide(name, dataplane, shadow_writer, outputs=self.outputs,
                                version_column=version_column, post=post) \
            if shadow_writer is not None else None

    @classmethod
    def from_config(cls, config: PipelineConfig, dataplane: DataPlane, *,
                    model_name: str) -> Pipeline:
        return cls(
            config.name, model_name, dataplane,
            retriever=build(config.retriever, RETRIEVERS, f"{config.name}.retriever")
            if config.retriever else None,
            writer=build(config.writer, WRITERS, f"{config.name}.writer")
            if config.writer else None,
            pre=import_object(config.pre, f"{config.name}.pre") if config.pre else None,
            post=import_object(config.post, f"{config.name}.post") if config.post else None,
            outputs=config.outputs,
            version_column=config.version_column,
            features=config.features,
            shadow_writer=build(config.shadow_writer, WRITERS,
                                f"{config.name}.shadow_writer")
            if config.shadow_writer else None,
        )

    @property
    def components(self) -> list[Retriever | Writer]:
        return [c for c in (self.retriever, self.writer) if c is not None]

    async def start(self) -> None:
        for component in self._opened:
            await component.start()
        if self.shadow_writer is not None and self.model is not None:
            ep = self.dataplane.endpoints.get(self.model)
            if ep is not None and ep.policy.shadow is None:
                log.warning("pipeline %s: model %s has no shadow: the shadow_writer writes "
                            "nothing until it has one", self.name, self.model)

    async def drain(self) -> None:
        """Wait for the shadow sides of HTTP runs still being scored or written."""
        if self._side is not None:
            await self._side.drain()

    async def close(self) -> None:
        await self.drain()
        for component in self._opened:
            await component.close()

    @property
    def _opened(self) -> list[Retriever | Writer]:
        # the side writer is opened and closed with the rest, but is not part of the
        # pipeline's readiness: a shadow's sink never takes the pipeline out of service
        return [*self.components, *([self.shadow_writer] if self.shadow_writer else [])]

    async def run(self, keys: Sequence[Key]) -> dict[Key, dict[str, Any]]:
        """Retrieve, score, write; a result or an error per key (what the HTTP trigger
        answers, and the way to call a pipeline from Python)."""
        if self.retriever is None:
            raise ConfigError(f"pipeline {self.name!r} has no retriever to look keys up with")
        frame = await self.retriever.get(list(dict.fromkeys(keys)))
        scored = await self.score(frame)
        # the caller does not wait for the shadow: its side is written in the background
        side, scored.shadow = scored.shadow, None
        await self.write(scored)
        if side is not None and self._side is not None:
            self._side.later(side)
        answers: dict[Key, dict[str, Any]] = {
            k: {"error": f"no data for key {k!r}"} for k in keys}
        for reject in scored.rejects:
            answers[reject.key] = {"error": reject.reason}
        for key, record in zip(scored.results.keys, _json_records(scored.results), strict=True):
            answers[key] = record
        return answers

    async def score(self, frame: Frame) -> Scored:
        """Every step but the writer: `pre`, the rows checked against the model's
        signature (the misfits set aside), the model, `post`. Triggers call this, then
        `write`, and choose how the two overlap (a batch job scores the next chunk while
        the last one is written)."""
        if self.pre is not None and len(frame):
            frame = self.pre(frame)
        scored = await self._predict(frame)
        if self.post is not None and len(scored.results):
            scored.results = self.post(scored.results)
        return scored

    async def write(self, scored: Scored) -> None:
        """Store the results with the writer (nothing to do without one, or no rows),
        and the shadow's results of the same rows with the `shadow_writer`: scored
        while the results are written, written once they are (never raising)."""
        side, scored.shadow = scored.shadow, None
        scoring = self._side.scoring(side) if side is not None and self._side else None
        try:
            if self.writer is not None and len(scored.results):
                await self.writer.write(scored.results)
        except BaseException:
            if scoring is not None:  # a write tried again scores its side again
                scoring.cancel()
                await asyncio.gather(scoring, return_exceptions=True)
                scored.shadow = side
            raise
        if scoring is not None and side is not None and self._side is not None:
            await self._side.write(side, await scoring)

    async def _predict(self, frame: Frame) -> Scored:
        if not len(frame):
            return Scored(Frame([], {}))
        if self.model is None:
            return Scored(frame)
        deployment = self.dataplane.deployment(self.model)
        signature = deployment.model.signature
        inputs, consumed = self._inputs(frame, signature)
        batch, good, rejects = validate_rows(signature, frame.keys, inputs)
        if batch is None:
            return Scored(Frame([], {}), rejects)
        keys = list(frame.keys) if not rejects else [frame.keys[i] for i in good]
        shadowed: list[ShadowCall] = []
        try:
            outputs, deployment = await self.dataplane.answer(
                deployment, batch, source=f"pipeline:{self.name}", keys=keys,
                outputs=self.outputs,
                shadow_to=shadowed.append if self.shadow_writer is not None else None)
        except ModelOutputError as exc:  # nothing of that answer fits a row: reject all
            return Scored(Frame([], {}), rejects + [Reject(k, exc.message) for k in keys])
        if self.outputs:
            outputs = {k: outputs[k] for k in self.outputs}
        # columns the model does not take (ids, timestamps, a routing key) ride along
        extra = {k: v if not rejects else _rows(v, good) for k, v in frame.columns.items()
                 if k not in consumed and k not in outputs}
        side = SideCall(shadowed[0], keys, dict(extra)) if shadowed else None
        if self.version_column:
            # read off the deployment that answered, not the one serving now: an alias
            # may have moved while the batch was in the model
            extra[self.version_column] = np.full(len(keys), deployment.version, np.int64)
        return Scored(Frame(keys, {**extra, **outputs}), rejects, side)

    def _inputs(self, frame: Frame, signature: Signature) -> tuple[dict[str, Any], set[str]]:
        """The model's inputs from the frame's columns, and the columns they used: an
        input by its name, or an array input made of its feature columns (`features`,
        else every column when they are as many as its width), stacked in one copy."""
        inputs = {s.name: frame.columns[s.name] for s in signature.inputs
                  if s.name in frame.columns}
        consumed = set(inputs)
        spec = signature.inputs[0]
        if inputs or len(signature.inputs) != 1 or len(spec.shape) != 1:
            return inputs, consumed
        names = self.features.get(spec.name)
        if names is None and len(frame.columns) != spec.shape[0]:
            return inputs, consumed  # the signature's check says the input is missing
        names = list(frame.columns) if names is None else names
        absent = [n for n in names if n not in frame.columns]
        if absent:
            raise ConfigError(f"pipeline {self.name!r}: features of input {spec.name!r}: the "
                              f"rows have no column(s) {', '.join(map(repr, absent[:5]))}")
        columns = [frame.columns[n] for n in names]
        inputs[spec.name] = np.column_stack(columns) if columns else np.empty((len(frame), 0))
        return inputs, set(names)


def validate_rows(signature: Signature, keys: Sequence[Key], inputs: dict[str, Any]
                  ) -> tuple[dict[str, Any] | None, list[int], list[Reject]]:
    """The one check of a pipeline's rows against the model's signature: the model's
    batch (None when no row fits), the rows in it, and the rows set aside, each with
    the reason naming the field at fault."""
    try:
        return signature.validate(inputs), list(range(len(keys))), []
    except InvalidInput:
        pass
    # find the rows at fault, one by one, only when the chunk as a whole fails
    good: list[int] = []
    rejects: list[Reject] = []
    for i, key in enumerate(keys):
        try:
            signature.validate({k: _rows(v, [i]) for k, v in inputs.items()})
        except InvalidInput as exc:
            rejects.append(Reject(key, exc.message.replace(" at row 0", "")))
        else:
            good.append(i)
    if not good:
        return None, good, rejects
    return signature.validate({k: _rows(v, good) for k, v in inputs.items()}), good, rejects


def _rows(values: Any, rows: list[int]) -> Any:
    if isinstance(values, np.ndarray):
        return values[np.asarray(rows, dtype=np.intp)]
    return [values[i] for i in rows]


def _json_records(frame: Frame) -> list[dict[str, Any]]:
    cols = {k: jsonable(v) if isinstance(v, np.ndarray) else list(v)
            for k, v in frame.columns.items()}
    return [{k: cols[k][i] for k in cols} for i in range(len(frame))]


def import_object(path: str, where: str) -> Any:
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ConfigError(f"{where}: {path!r} is not an import path like 'package.module:name'")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: cannot import {path!r}: {exc}") from exc
    return obj


def build(config: ComponentConfig, builtins: dict[str, str], where: str) -> Any:
    """Make a component from its config: a built-in by name, or `module:Class`."""
    target = builtins.get(config.type, config.type)
    if ":" not in target:
        raise ConfigError(f"{where}.type: unknown component {config.type!r}; built in: "
                          f"{', '.join(builtins)}, or an import path 'module:Class'")
    cls = import_object(target, f"{where}.type")
    try:
        return cls(**config.options)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
