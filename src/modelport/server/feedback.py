"""`POST /feedback`: ground truth for earlier predictions (see `monitoring.feedback`).

The body is one label, a list of them, or `{"feedback": [...]}`; the answer counts
what was stored and how many labels name no logged prediction (`unmatched`, with a
few of them as examples), so wrong ids show up at once instead of as a quiet gap in
the live quality. It needs the same key as predictions (`predict` scope) when
`require_predict_key` is on.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.errors import Conflict
from modelport.monitoring.feedback import FeedbackStore, parse_body
from modelport.server.responses import JSON, read_json
from modelport.server.state import dataplane


def _store(request: Request) -> FeedbackStore:
    store: FeedbackStore | None = getattr(request.app.state, "feedback", None)
    if store is None:
        plog = dataplane(request).prediction_log
        if plog is None:
            raise Conflict("feedback needs the prediction log, and monitoring is off here "
                           "(MODELPORT_MONITORING__ENABLED=false)")
        # the log's own engine: one pool, closed with the log when the server stops
        store = request.app.state.feedback = FeedbackStore(plog.store)
    return store


async def submit(request: Request) -> Response:
    """Ground truth for earlier predictions: `{"request_id": "…", "row": 0, "label": 1}`
    or `{"pipeline": "NAME", "key": 42, "label": 1}`, one or a list (or `{"feedback":
    [...]}`); answers how many were stored and how many name no logged prediction."""
    labels = parse_body(await read_json(request))
    receipt = await asyncio.to_thread(_store(request).submit, labels)
    return JSON(receipt.as_json())


routes = [Route("/feedback", submit, methods=["POST"])]
