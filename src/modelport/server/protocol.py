"""The HTTP/1.1 protocol the server runs: uvicorn's httptools one, with a drain that
answers requests on idle keep-alive connections instead of resetting them, admission
from the request's head (`server.admission`), and a response's head and body sent in
one write (`HeadWithBody`)."""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from modelport.server.admission import Admission, Refusal

# How long an idle keep-alive connection stays open once the drain begins: a client
# may have sent its next request before it could see the close; a longer wait only
# delays the exit
DRAIN_IDLE_S = 1.0


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    """At SIGTERM uvicorn closes idle keep-alive connections at once, so a request
    already on its way is reset unanswered. Here an idle connection stays open for
    `DRAIN_IDLE_S`; a request that arrives meanwhile is served and answered with
    `Connection: close`, then the connection closes."""

    draining = False
    drain_close: asyncio.TimerHandle | None = None
    admission: Admission | None = None  # set by `http_protocol`

    def shutdown(self) -> None:
        self.draining = True
        if self.cycle is None or self.cycle.response_complete:
            if self.timeout_keep_alive_task is not None:
                self.timeout_keep_alive_task.cancel()
                self.timeout_keep_alive_task = None
            self.drain_close = self.loop.call_later(DRAIN_IDLE_S, self._close_if_idle)
        else:
            self.cycle.keep_alive = False

    def _close_if_idle(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, HeadWithBody(transport)))

    def on_headers_complete(self) -> None:
        if self.drain_close is not None:
            self.drain_close.cancel()
            self.drain_close = None
        if self.admission is not None and not self.draining and self._refused():
            return
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # the answer says `Connection: close`

    def connection_lost(self, exc: Exception | None) -> None:
        if self.drain_close is not None:
            self.drain_close.cancel()
            self.drain_close = None
        super().connection_lost(exc)

    def _refused(self) -> bool:
        """Answer 503 from the request's head when admission refuses it, and skip its
        body; a pipelined request (one still running before it) or one that closes
        its connection takes the usual way. A request let through is counted."""
        admission = self.admission
        assert admission is not None
        refused = self._refusal(admission) if admission.pressed else None
        if refused is None:
            admission.let_through()
            return False
        request_id = next((v for n, v in self.headers if n == b"x-request-id"), None)
        self.transport.write(admission.response(
            refused, request_id, self.server_state.default_headers))
        # an answered cycle: the parser's body and message-complete callbacks skip it
        self.cycle = _ANSWERED
        self.on_response_complete()
        return True

    def _refusal(self, admission: Admission) -> Refusal | None:
        if self.cycle is not None and not self.cycle.response_complete:
            return None
        if self.parser.get_http_version() != "1.1" or not self.parser.should_keep_alive():
            return None
        raw = httptools.parse_url(self.url).path
        path = urllib.parse.unquote(raw.decode("ascii")) if b"%" in raw \
            else raw.decode("ascii")
        return admission.refusal(self.parser.get_method().decode("ascii"), path,
                                 self.headers)


class HeadWithBody:
    """A transport that holds a response's head until its body is written, to send
    both in one write: uvicorn writes them apart, and each write is a system call and
    a TCP segment the client wakes up for. A head whose body does not come in the same
    turn of the loop (a streamed response) is sent at the end of that turn."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":  # a head (headers end so)
            self._held = bytes(data)
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # the rest of the transport as it is
        return getattr(self._transport, name)


class _NoWaiters:
    """The message event of an answered request: nothing waits on it."""

    def set(self) -> None:
        pass


class _Answered:
    """Stands in for the cycle of a request answered from its head. One serves every
    such request: it is never changed (what uvicorn changes on a cycle it changes only
    while its response is incomplete), and nothing waits on its event."""

    response_complete = True
    keep_alive = True
    message_event = _NoWaiters()


_ANSWERED = cast(RequestResponseCycle, _Answered())


def http_protocol(admission: Admission) -> type[DrainingHttpToolsProtocol]:
    """The protocol class for a server whose predictions `admission` admits."""
    attributes: dict[str, Any] = {"admission": admission}
    return type("AdmittingHttpToolsProtocol", (DrainingHttpToolsProtocol,), attributes)
