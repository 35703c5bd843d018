"""The HTTP trigger of pipelines: `POST /pipelines/{name}/run`."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.errors import InvalidInput, NotFound
from modelport.pipeline import Pipeline
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
    results = await pipeline.run(keys)
    answer: dict[str, Any] = {"pipeline": pipeline.name, "model": pipeline.model}
    if pipeline.model is not None:
        deployment = pipeline.dataplane.deployment(pipeline.model)
        request.state.version = answer["version"] = deployment.version
    if isinstance(body, dict) and "key" in body:
        answer["key"], answer["result"] = keys[0], results[keys[0]]
    else:
        answer["results"] = [{"key": k, **results[k]} for k in keys]
    return JSON(answer)


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
