"""Admission: a prediction whose model's queue is full is refused from the request's
head alone, before its body is read, parsed or validated.

Under overload most requests are refused. Refusing them after reading and decoding
their bodies spends the core the admitted ones need, and a refusal that waits its turn
on the event loop behind every other connection's work is slow to tell the client to
go elsewhere. So the server's HTTP protocol asks `Admission.refusal` as soon as a
request's head is parsed and, when it says no, writes the 503 itself: no ASGI task,
no middleware, no JSON encoding (`server.protocol`). The `Admission` middleware asks
the same question for an app served by another ASGI server. The batcher's own check
stays the last word.

A request let through reaches its queue only in the loop's next turn (its ASGI task
runs then), so the heads the protocol reads in one turn would all see the room one
slot left: under overload each freed slot let dozens through, to be refused the
expensive way, after their bodies were parsed, in a burst that stalled the loop. So
the heads let through in a turn count against every queue's room until the turn
ends (`let_through`): with one slot free, one request goes on.

Refusals made in the protocol have no access-log line (a flood of them would drown the
log); they are counted as requests with status 503 and as rejections `queue_full`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport.errors import Overloaded
from modelport.security import KeyStore
from modelport.server.auth import presented_key, required_scope
from modelport.server.middleware import new_request_id
from modelport.server.responses import error_response

if TYPE_CHECKING:
    from modelport.batching import AdaptiveBatcher
    from modelport.dataplane import DataPlane

PREDICTION_PATH = re.compile(
    r"/models/([^/]+)/predict|/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
"""The two prediction routes' paths, as the router's `{name}` and `{version}` match
them: the JSON API's name (1), or OIP v2's name (2) and version (3, if given)."""
RETRY_AFTER_S = 1.0
_CACHED = 1024  # refusals whose answers are kept built (models x versions x routes)


@dataclass(frozen=True)
class Refusal:
    """A prediction refused for a full queue: whose, and what to tell the client."""

    model: str
    version: str
    route: str
    message: str


class _Answer:
    """A refusal's whole 503 but its request id, for one set of default headers."""

    __slots__ = ("count", "defaults", "head", "tail")

    def __init__(self, defaults: Iterable[tuple[bytes, bytes]], head: bytes, tail: bytes,
                 count: Counter) -> None:
        self.defaults, self.head, self.tail, self.count = defaults, head, tail, count


class Admission:
    """Decides from a request's head whether a prediction is refused now; also the
    ASGI middleware that applies the decision (after the key check, before the body)."""

    def __init__(self, app: ASGIApp | None, dataplane: DataPlane, keys: KeyStore,
                 require_predict_key: bool) -> None:
        self.app = app
        self.dataplane = dataplane
        self.keys = keys
        self.require_predict_key = require_predict_key
        # labelled children, cached (as RequestContext does): rejections, 503s
        self._rejections: dict[str, Counter] = {}
        self._requests: dict[tuple[str, str, str], Counter] = {}
        # under overload most requests are refused, each at the cost of a core's time:
        # a refusal's answer is built once (per model version, route and message), and
        # again only when the server's default headers (its date) change. Keyed by
        # value: a retired version's model is not kept alive by it
        self._answers: dict[Refusal, _Answer] = {}
        self._turn = 0  # heads let through in this turn of the loop: not queued yet

    @property
    def pressed(self) -> bool:
        """Whether any served model's queue has no room for another request: the one
        check made of every request's head, before its path is even parsed."""
        return any(ep.current is not None and self._no_room(ep.current.batcher)
                   for ep in self.dataplane.endpoints.values())

    def _no_room(self, batcher: AdaptiveBatcher) -> bool:
        return batcher.depth + self._turn >= batcher.max_queue

    def let_through(self) -> None:
        """On the loop: a request's head was let through; until the loop's turn ends
        it counts against every queue's room (a health check too: one count for all
        is cheaper than parsing every path, and it only ever refuses early by the
        requests of one turn, when a queue is nearly full)."""
        if not self._turn:
            asyncio.get_running_loop().call_soon(self._new_turn)
        self._turn += 1

    def _new_turn(self) -> None:
        # runs before the ASGI tasks of the turn's requests: each was created after
        # this callback was scheduled, and none of them can be refused by its own count
        self._turn = 0

    def refusal(self, method: str, path: str,
                headers: Iterable[tuple[bytes, bytes]]) -> Refusal | None:
        """The refusal for this request, or None to let it through. A request the key
        check would turn away is let through: it gets its 401/403 first."""
        if method != "POST":
            return None
        match = PREDICTION_PATH.fullmatch(path)
        if match is None:
            return None
        name = match[1] or match[2]
        endpoint = self.dataplane.endpoints.get(name)
        current = endpoint.current if endpoint is not None else None
        if current is None or not self._no_room(current.batcher):
            return None
        if required_scope(path, self.require_predict_key) is not None:
            key = presented_key({"headers": headers})
            known = self.keys.authenticate(key) if key is not None else None
            if known is None or not known.allows("predict"):
                return None
        rejected = self._rejections.get(name)
        if rejected is None:
            rejected = self._rejections[name] = self.dataplane.metrics.rejections.labels(
                name, "queue_full")
        rejected.inc()
        route = "predict" if match[1] else "v2"
        return Refusal(name, str(current.version), route, current.batcher.full_message())

    def response(self, refused: Refusal, request_id: bytes | None,
                 default_headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The whole HTTP/1.1 503 for `refused`, as the error handlers would write it,
        counted as a request (the protocol writes it: no middleware sees it)."""
        answer = self._answers.get(refused)
        if answer is None or answer.defaults is not default_headers:
            answer = self._answer(refused, default_headers)
        answer.count.inc()
        return answer.head + (request_id or new_request_id()) + answer.tail

    def _answer(self, refused: Refusal,
                default_headers: Iterable[tuple[bytes, bytes]]) -> _Answer:
        key = (refused.model, refused.version, refused.route)
        count = self._requests.get(key)
        if count is None:
            count = self._requests[key] = self.dataplane.metrics.requests.labels(*key, "503")
        body = error_response(Overloaded(refused.message, retry_after=RETRY_AFTER_S)).body
        head = [b"HTTP/1.1 503 Service Unavailable",
                *(name + b": " + value for name, value in default_headers),
                b"content-type: application/json",
                b"content-length: %d" % len(body),
                b"retry-after: %d" % max(1, round(RETRY_AFTER_S)),
                b"x-request-id: "]
        answer = _Answer(default_headers, b"\r\n".join(head), b"\r\n\r\n" + bytes(body), count)
        if len(self._answers) >= _CACHED:
            self._answers.clear()
        self._answers[refused] = answer
        return answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None
        refused = self.refusal(scope["method"], scope["path"], scope["headers"]) \
            if scope["type"] == "http" else None
        if refused is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["model"], state["version"] = refused.model, refused.version
        state["route"] = refused.route
        response = error_response(Overloaded(refused.message, retry_after=RETRY_AFTER_S))
        await response(scope, receive, send)

