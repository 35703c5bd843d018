"""Open Inference Protocol v2 (REST): health, metadata and inference.

Spec: KServe `docs/predict-api/v2/required_api.md` and the open-inference-protocol
repository.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.server.responses import JSON
from modelport.server.state import dataplane


async def live(request: Request) -> Response:
    return JSON({"live": True})


async def ready(request: Request) -> Response:
    ok, detail = dataplane(request).readiness()
    # the spec: 200 means ready, a 4xx means not ready
    return JSON({"ready": ok, "models": detail}, status_code=200 if ok else 400)


routes = [
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
]
