"""The events service: `POST /listens {user, track, ts?, id?}`.

A listen is checked (a track the catalogue does not have is a 400 that names it),
stored in the listens table (the record the trainer learns from), then published on
the listens stream for the realtime worker. Stored first: if publishing fails, the
client gets a 503 and retries with the same `id`, which is stored once and published
again (the broker de-duplicates on it, or the history fold does).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from modelport import InvalidInput
from modelport.server import JSON, read_json
from modelport.streams import Broker
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from music.recommender import check_user
from music.store import Store, Track

MAX_AGE_S = 10 * 365 * 86_400
FUTURE_SLACK_S = 300


class Events:
    def __init__(self, store: Store, publisher: Broker, stream: str,
                 catalog: dict[str, Track]) -> None:
        self.store, self.publisher, self.stream, self.catalog = store, publisher, stream, catalog
        self.published = 0

    async def record(self, body: Any) -> dict[str, Any]:
        listen = self.validate(body)
        await asyncio.to_thread(self.store.add_listen, listen["id"], listen["user"],
                                listen["track"], listen["ts"])
        envelope = {"id": listen["id"], "data": {k: listen[k] for k in ("user", "track", "ts")}}
        await self.publisher.publish(self.stream, [orjson.dumps(envelope)], keys=[listen["id"]])
        self.published += 1
        return listen

    def validate(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidInput('expected {"user": "...", "track": "...", "ts": optional}')
        unknown = set(body) - {"user", "track", "ts", "id"}
        if unknown:
            raise InvalidInput(f"unknown field(s) {', '.join(sorted(unknown))}: a listen has "
                               "user, track, and optionally ts and id")
        for name in ("user", "track"):
            if not isinstance(body.get(name), str):
                raise InvalidInput(f"'{name}' is required, as text")
        user = check_user(body["user"])
        track = body["track"]
        if track not in self.catalog:
            raise InvalidInput(f"unknown track {track[:80]!r}: it is not in the catalogue")
        listen_id = body.get("id") or uuid.uuid4().hex
        if not isinstance(listen_id, str) or not 1 <= len(listen_id) <= 64:
            raise InvalidInput("'id' must be text of 1-64 characters")
        return {"id": listen_id, "user": user, "track": track, "ts": parse_ts(body.get("ts"))}


def parse_ts(value: Any) -> float:
    """Epoch seconds, or an ISO 8601 time (naive means UTC); default now."""
    now = time.time()
    if value is None:
        return now
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"'ts' must be epoch seconds or an ISO 8601 time, got {value!r}")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"'ts' {value[:40]!r} is not an ISO 8601 time") from None
        ts = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    else:
        ts = float(value)
    if not math.isfinite(ts) or ts < now - MAX_AGE_S or ts > now + FUTURE_SLACK_S:
        raise InvalidInput(f"'ts' {value!r} is not a plausible time (the last ten years, "
                           "not the future)")
    return ts


async def post_listen(request: Request) -> Response:
    events: Events = request.app.state.events
    listen = await events.record(await read_json(request))
    return JSON(listen, status_code=201)


routes = [Route("/listens", post_listen, methods=["POST"])]
