"""The HTTP/1.1 protocol the server runs: uvicorn's httptools one, with a drain that
answers requests on idle keep-alive connections instead of resetting them."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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

    def on_headers_complete(self) -> None:
        if self.drain_close is not None:
            self.drain_close.cancel()
            self.drain_close = None
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # the answer says `Connection: close`

    def connection_lost(self, exc: Exception | None) -> None:
        if self.drain_close is not None:
            self.drain_close.cancel()
            self.drain_close = None
        super().connection_lost(exc)
