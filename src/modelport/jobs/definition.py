"""What a batch job is, beyond its source: the model, the retriever, the writer and the
pipeline options that change its output (with a `shadow_writer`, it and the shadow).
A checkpoint stores it, so that a run of a changed job (another results table, another
model) never continues where the old one stopped, which would leave the new output
holding only the rows after that point.

The definition is JSON text: what the configuration says (or, for components handed
to a service in Python, their class and where they read or write), without settings
that do not change the output (timeouts, retries, headers) and with passwords in URLs
hidden (the text is stored, and a rotated password is the same job).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from modelport.pipeline import PipelineConfig, Retriever, Writer
from modelport.service import Service

NOT_OUTPUT = frozenset({"timeout", "retries", "backoff", "headers", "transport"})
"""Component options that change how a component reaches its medium, not what it
reads or writes."""
IDENTITY = ("url", "table", "query", "key", "columns", "path", "prefix", "format",
            "subject", "ttl")
"""Attributes that say where an injected component reads or writes."""
_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@/\s]+@")


def definition(service: Service, pipeline: str) -> str:
    """The definition of batch runs of `pipeline` on `service`, as stable JSON text."""
    pipe = service.pipeline(pipeline)
    config = next((p for p in service.config.pipelines if p.name == pipeline), None)
    endpoint = service.dataplane.endpoints.get(pipe.model) if pipe.model else None
    parts: dict[str, Any] = {
        "model": endpoint.config.ref if endpoint is not None else pipe.model,
        "retriever": _component(config, "retriever", pipe.retriever),
        "writer": _component(config, "writer", pipe.writer),
        "pre": config.pre if config else _name(pipe.pre),
        "post": config.post if config else _name(pipe.post),
        "outputs": pipe.outputs,
        "version_column": pipe.version_column,
        "features": pipe.features or None,
    }
    if pipe.shadow_writer is not None:
        # the side table is output too; only when there is one, so that the definitions
        # stored before shadow writers existed still match
        shadow = endpoint.policy.shadow if endpoint is not None else None
        parts["shadow"] = shadow.ref if shadow is not None else None
        parts["shadow_writer"] = _component(config, "shadow_writer", pipe.shadow_writer)
    return orjson.dumps(_redacted(parts), option=orjson.OPT_SORT_KEYS,
                        default=str).decode()


def differences(stored: str, now: str) -> list[str]:
    """What differs between two definitions, one `part: was → now` per part."""
    old, new = orjson.loads(stored), orjson.loads(now)
    return [f"{part}: {_show(old.get(part))} → {_show(new.get(part))}"
            for part in sorted(set(old) | set(new)) if old.get(part) != new.get(part)]


def _component(config: PipelineConfig | None, which: str,
               instance: Retriever | Writer | None) -> dict[str, Any] | None:
    declared = getattr(config, which) if config is not None else None
    if declared is not None:
        return {"type": declared.type, **{k: v for k, v in declared.options.items()
                                          if k not in NOT_OUTPUT}}
    if instance is None:
        return None
    cls = type(instance)
    return {"type": f"{cls.__module__}:{cls.__qualname__}",
            **{a: getattr(instance, a) for a in IDENTITY if hasattr(instance, a)}}


def _name(step: Any) -> str | None:
    """A pre/post step by name: a function's, or a callable object's class."""
    if step is None:
        return None
    named = step if hasattr(step, "__qualname__") else type(step)
    return f"{named.__module__}:{named.__qualname__}"


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return _PASSWORD.sub(r"\1***@", value)
    if isinstance(value, dict):
        return {str(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float) else str(value)


def _show(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
