"""The OpenAPI document, written from each served model's signature.

`/docs` then shows every model's real input columns and types, and an example built
from the sample rows stored at registration.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import Route

from modelport.dataplane import DataPlane
from modelport.server.example import example_body
from modelport.signature import FieldSpec, Signature

_JSON_TYPES = {"BOOL": "boolean", "BYTES": "string", "FP16": "number", "FP32": "number",
               "FP64": "number"}


def field_schema(spec: FieldSpec, allow_nan: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _JSON_TYPES.get(spec.datatype, "integer"),
                              "description": spec.datatype}
    for dim in reversed(spec.shape):
        schema = {"type": "array", "items": schema,
                  **({"minItems": dim, "maxItems": dim} if dim >= 0 else {})}
    if allow_nan and spec.datatype.startswith("FP"):
        schema["nullable"] = True
    return schema


def request_schema(sig: Signature) -> dict[str, Any]:
    record = {
        "type": "object",
        "properties": {s.name: field_schema(s, sig.allow_nan) for s in sig.inputs},
        "required": [s.name for s in sig.inputs],
        "additionalProperties": False,
    }
    if sig.layout == "columns":
        row: dict[str, Any] = {"type": "array", "prefixItems": [
            field_schema(s, sig.allow_nan) for s in sig.inputs],
            "minItems": len(sig.inputs), "maxItems": len(sig.inputs),
            "description": "values in column order: " + ", ".join(s.name for s in sig.inputs)}
    else:
        row = field_schema(sig.inputs[0], sig.allow_nan)
    props: dict[str, Any] = {
        "instances": {"type": "array", "items": row, "description": "rows"},
        "records": {"type": "array", "items": record, "description": "named values per row"},
    }
    if sig.outputs:
        props["outputs"] = {
            "type": "array", "minItems": 1,
            "items": {"type": "string", "enum": [s.name for s in sig.outputs]},
            "description": "compute and answer only these outputs, each under its own "
                           "name (default: all, the first as \"predictions\")"}
    return {"type": "object", "properties": props}


def response_schema(sig: Signature) -> dict[str, Any]:
    props: dict[str, Any] = {s.name: {"type": "array", "items": field_schema(s)}
                             for s in sig.outputs}
    if sig.outputs:
        props["predictions"] = props.pop(sig.outputs[0].name)
    props["model"] = {"type": "string"}
    props["version"] = {"type": "integer"}
    return {"type": "object", "properties": props}


# every 4xx/5xx answer (server.responses)
ERROR = {"title": "Error", "type": "object", "required": ["error"],
         "properties": {"error": {"type": "string", "description": "what is wrong"}}}


def openapi_schema(app: FastAPI, dataplane: DataPlane) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                         description="Models served by this modelport server.")
    paths: dict[str, Any] = schema.setdefault("paths", {})
    schemas = schema.get("components", {}).get("schemas", {})
    if "HTTPValidationError" in schemas:  # a typed route's 422: our handler's shape
        schemas["HTTPValidationError"] = ERROR
        schemas.pop("ValidationError", None)
    for route in app.routes:  # plain Starlette routes (the v2 protocol …): from docstrings
        if type(route) is Route and route.include_in_schema and route.path not in paths:
            paths[route.path] = _plain_route(route)
    paths.pop("/models/{name}/predict", None)
    for name, ep in dataplane.endpoints.items():
        if ep.current is None:
            continue
        sig = ep.current.model.signature
        example = example_body(sig, rows=2)
        paths[f"/models/{name}/predict"] = {"post": {
            "summary": f"Predict with {name} (version {ep.current.version})",
            "description": "Inputs: " + sig.describe(),
            "tags": ["models"],
            "operationId": f"predict_{name}",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": request_schema(sig), "example": example}}},
            "responses": {
                "200": {"description": "predictions",
                        "content": {"application/json": {"schema": response_schema(sig)}}},
                "400": _error("input does not match the signature"),
                "503": _error("queue full (see Retry-After) or model not loaded"),
                "504": _error("no prediction within the request deadline"),
            },
        }}
    return schema


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _plain_route(route: Route) -> dict[str, Any]:
    summary, _, description = (inspect.getdoc(route.endpoint) or route.name).partition("\n")
    params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
              for p in route.param_convertors]
    tag = route.path.strip("/").split("/")[0] or "server"
    return {method.lower(): {
        "summary": summary.strip(), "description": description.strip(), "tags": [tag],
        "operationId": method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", route.path).rstrip("_"),
        **({"parameters": params} if params else {}),
        "responses": {"200": {"description": "OK"}},
    } for method in sorted((route.methods or set()) - {"HEAD"})}
