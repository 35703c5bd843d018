"""The HTTP trigger of pipelines: `POST /pipelines/{name}/run`."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.datatypes import jsonable
from modelport.errors import ConfigError, InvalidInput, NotFound
from modelport.pipeline import Frame, Pipeline
from modelport.server.responses import JSON, read_json

MAX_KEYS = 10_000


def _pipeline(request: Request) -> Pipeline:
    name = request.path_params["name"]
    pipelines: dict[str, Pipeline] = request.app.state.pipelines
    try:
        return pipelines[name]
    except KeyError:
        raise NotFound(f"no pipeline named {name!r}") from None


async def run(request: Request) -> Response:
    """`{"key": k}` or `{"keys": [k, …]}` → a result or an error for every key."""
    pipeline = _pipeline(request)
    request.state.model, request.state.route = pipeline.model, "pipeline"
    body = await read_json(request)
    keys = _keys(body)
    results = await score_keys(pipeline, keys)
    answer: dict[str, Any] = {"pipeline": pipeline.name, "model": pipeline.model}
    if pipeline.model is not None:
        deployment = pipeline.dataplane.deployment(pipeline.model)
        request.state.version = answer["version"] = deployment.version
    if isinstance(body, dict) and "key" in body:
        answer["key"], answer["result"] = keys[0], results[keys[0]]
    else:
        answer["results"] = [{"key": k, **results[k]} for k in keys]
    return JSON(answer)


async def score_keys(pipeline: Pipeline, keys: list[Hashable]
                     ) -> dict[Hashable, dict[str, Any]]:
    """Retrieve, score, write; a result or an error per key."""
    if pipeline.retriever is None:
        raise ConfigError(f"pipeline {pipeline.name!r} has no retriever to look keys up with")
    frame = await pipeline.retriever.get(list(dict.fromkeys(keys)))
    scored = await pipeline.score(frame)
    await pipeline.write(scored)
    answers: dict[Hashable, dict[str, Any]] = {
        k: {"error": f"no data for key {k!r}"} for k in keys}
    for reject in scored.rejects:
        answers[reject.key] = {"error": reject.reason}
    for key, record in zip(scored.results.keys, _json_records(scored.results), strict=True):
        answers[key] = record
    return answers


def _json_records(frame: Frame) -> list[dict[str, Any]]:
    cols = {k: jsonable(v) if isinstance(v, np.ndarray) else list(v)
            for k, v in frame.columns.items()}
    return [{k: cols[k][i] for k in cols} for i in range(len(frame))]


def _keys(body: Any) -> list[Hashable]:
    if not isinstance(body, dict) or not ("key" in body) ^ ("keys" in body):
        raise InvalidInput('expected {"key": K} or {"keys": [K, ...]}')
    keys = [body["key"]] if "key" in body else body["keys"]
    if not isinstance(keys, list) or not keys:
        raise InvalidInput("'keys' must be a non-empty list")
    if len(keys) > MAX_KEYS:
        raise InvalidInput(f"at most {MAX_KEYS} keys per call; run a batch job for more")
    for i, key in enumerate(keys):
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise InvalidInput(f"keys[{i}]: a key is a string or an integer, got {key!r}")
    return keys


routes = [Route("/pipelines/{name}/run", run, methods=["POST"])]
