"""Open Inference Protocol v2 (REST): health, metadata and inference.

Spec: KServe `docs/predict-api/v2/required_api.md` and the open-inference-protocol
repository, with Triton's binary tensor data extension (what `tritonclient` sends by
default). The wire format lives in `v2_codec`; this module is the HTTP layer, plus how
a request's tensors map onto a model's signature. Errors answer `{"error": "…"}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport import __version__
from modelport.dataplane import Deployment
from modelport.datatypes import DATATYPES
from modelport.errors import InvalidInput, VersionNotFound
from modelport.server import v2_codec as codec
from modelport.server.responses import JSON
from modelport.server.state import dataplane
from modelport.service import pipeline_readiness
from modelport.signature import FieldSpec, Signature

EXTENSIONS = ["binary_tensor_data"]
NUMERIC = frozenset(DATATYPES) - {"BOOL", "BYTES"}
INTEGER = frozenset(d for d in NUMERIC if "INT" in d)


# --- server ---------------------------------------------------------------------------


async def server_metadata(request: Request) -> Response:
    """Server metadata: name, version and the protocol extensions supported."""
    return JSON({"name": "modelport", "version": __version__, "extensions": EXTENSIONS})


async def live(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSON({"live": True})


async def ready(request: Request) -> Response:
    """Readiness: 200 when every served model is loaded and every pipeline's backing
    services answer; 400 (with why) when not."""
    ok, detail = dataplane(request).readiness()
    body: dict[str, Any] = {"ready": ok, "models": detail}
    if request.app.state.pipelines:
        services_ok, body["pipelines"] = await pipeline_readiness(
            request.app.state.pipelines.values())
        body["ready"] = ok = ok and services_ok
    if ok:
        return JSON(body)
    # the spec: a 4xx means not ready; with what is wrong under "error", like every 4xx
    return JSON({"error": _not_ready(body), **body}, status_code=400)


def _not_ready(body: dict[str, Any]) -> str:
    why = [f"model {name}: {info.get('error', 'not loaded yet')}"
           for name, info in body["models"].items() if not info["ready"]]
    why += [f"pipeline {name}: {info['error']}"
            for name, info in body.get("pipelines", {}).items() if not info["ready"]]
    return "not ready: " + ("; ".join(why) or "no models to serve")


# --- models ---------------------------------------------------------------------------


async def model_metadata(request: Request) -> Response:
    """Model metadata: versions, platform, and inputs/outputs with [-1, ...] shapes."""
    name, deployment = _deployment(request, "v2_metadata")
    sig = deployment.model.signature
    return JSON({
        "name": name,
        "versions": [str(deployment.version)],
        "platform": f"modelport-{deployment.model.record.flavor}",
        "inputs": [_tensor_metadata(s) for s in sig.inputs],
        "outputs": [_tensor_metadata(s) for s in sig.outputs],
    })


async def model_ready(request: Request) -> Response:
    """Model readiness: 200 `{"name", "ready": true}`, 400 when not loaded."""
    name, version = request.path_params["name"], request.path_params.get("version")
    ep = dataplane(request).endpoint(name)  # 404 for a model not served here
    if version is not None and ep.current is not None and version != str(ep.current.version):
        raise VersionNotFound(f"model {name!r} serves version {ep.current.version}, "
                              f"not {version}")
    if ep.ready:
        return JSON({"name": name, "ready": True})
    return JSON({"error": f"model {name} is not ready: {ep.error or 'not loaded yet'}",
                 "name": name, "ready": False}, status_code=400)


async def infer(request: Request) -> Response:
    """Inference: JSON tensors, or JSON then binary tensor data
    (`Inference-Header-Content-Length`); binary outputs on `binary_data_output` or an
    output's `binary_data`."""
    dp = dataplane(request)
    name, deployment = _deployment(request, "v2_infer")
    limit = request.app.state.settings.server.max_body_bytes
    body = codec.decompress(await request.body(), request.headers.get("content-encoding"),
                            limit)
    req = codec.parse_request(
        body, codec.header_length(request.headers.get(codec.HEADER_LENGTH), len(body)))
    sig = deployment.model.signature
    # only the outputs asked for are computed; a bad name costs no model call
    asked = [out.name for out in req.outputs] if req.outputs else None
    deployment.outputs.ask(asked)
    batch = sig.validate(to_batch(sig, req.inputs))
    outputs, deployment = await dp.answer(
        deployment, batch, source="v2_infer", headers=request.headers, outputs=asked,
        request_id=getattr(request.state, "request_id", None))
    request.state.version = deployment.version  # the canary's, when it answered
    content, json_length = codec.encode_response(
        outputs, model_name=name, model_version=str(deployment.version), request=req)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={codec.HEADER_LENGTH: str(json_length)})


def _deployment(request: Request, route: str) -> tuple[str, Deployment]:
    name, version = request.path_params["name"], request.path_params.get("version")
    deployment = dataplane(request).deployment(name, version)
    # labelled only once the model is known: unknown names must not grow the metrics
    request.state.model, request.state.version = name, deployment.version
    request.state.route = route
    return name, deployment


def _tensor_metadata(spec: FieldSpec) -> dict[str, object]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": [-1, *spec.shape]}


# --- request tensors to the model's inputs --------------------------------------------


def compatible(sent: str, expected: str) -> bool:
    """Numbers feed numbers (values are checked on conversion), 0/1 integers feed BOOL;
    BYTES feeds only BYTES."""
    return sent == expected or (sent in NUMERIC and expected in NUMERIC) or (
        expected == "BOOL" and sent in INTEGER)


def to_batch(signature: Signature, tensors: Sequence[codec.Tensor]) -> dict[str, np.ndarray]:
    """Match request tensors to the signature's inputs (validated next by the signature).

    A `tensor` model with one input takes one tensor under any name. A `columns` model
    takes one tensor per column, shaped [N] or [N, 1], or one [N, n_columns] tensor
    that is split into its columns.
    """
    specs = {s.name: s for s in signature.inputs}
    if signature.layout == "tensor" and len(specs) == 1 and len(tensors) == 1:
        _check_datatype(tensors[0], signature.inputs[0], "input")
        return {signature.inputs[0].name: tensors[0].data}
    if signature.layout == "columns" and len(tensors) == 1 and tensors[0].name not in specs:
        return _split_columns(signature, tensors[0])
    batch: dict[str, np.ndarray] = {}
    for tensor in tensors:
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidInput(f"unknown input {tensor.name!r}; this model takes "
                               f"{list(specs)}" + _columns_hint(signature))
        data = tensor.data
        if signature.layout == "columns":
            if data.ndim == 2 and data.shape[1] == 1:
                data = data.reshape(-1)
            elif data.ndim != 1:
                raise InvalidInput(f"input {tensor.name!r}: a column takes shape [N] or "
                                   f"[N, 1], got {list(data.shape)}")
        _check_datatype(tensor, spec, "input")
        batch[spec.name] = data
    return batch


def _split_columns(signature: Signature, tensor: codec.Tensor) -> dict[str, np.ndarray]:
    width = len(signature.inputs)
    data = tensor.data
    if data.ndim == 1 and width == 1:
        data = data.reshape(-1, 1)
    if data.ndim != 2 or data.shape[1] != width:
        raise InvalidInput(
            f"input {tensor.name!r}: shape {list(data.shape)} does not fit this model's "
            f"{width} columns; send one tensor of shape [N, {width}] or one tensor per "
            "column" + _columns_hint(signature))
    for spec in signature.inputs:
        _check_datatype(tensor, spec, "column")
    return {spec.name: data[:, i] for i, spec in enumerate(signature.inputs)}


def _check_datatype(tensor: codec.Tensor, spec: FieldSpec, what: str) -> None:
    if not compatible(tensor.datatype, spec.datatype):
        target = "" if spec.name == tensor.name else f" of {what} {spec.name!r}"
        raise InvalidInput(f"input {tensor.name!r}: datatype {tensor.datatype} does not fit "
                           f"the model's {spec.datatype}{target}")


def _columns_hint(signature: Signature) -> str:
    if signature.layout != "columns":
        return ""
    return f" (columns: {', '.join(s.name for s in signature.inputs)})"


_MODEL = "/v2/models/{name}"
_VERSION = "/v2/models/{name}/versions/{version}"

routes = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    *(route for prefix in (_MODEL, _VERSION) for route in (
        Route(prefix, model_metadata, methods=["GET"]),
        Route(prefix + "/ready", model_ready, methods=["GET"]),
        Route(prefix + "/infer", infer, methods=["POST"]),
    )),
]
