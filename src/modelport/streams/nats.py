"""NATS JetStream: a durable pull consumer with explicit acks.

The consumer `durable` on stream `stream` reads `subject`; every worker binds to the
same durable, and JetStream hands each message to one of them. A message not
acknowledged within `ack_wait` seconds (its worker died, or is stuck) is delivered
again, to any worker, with `num_delivered` raised: that is the delivery count the
worker dead-letters on. JetStream itself stops after `max_deliver` deliveries and then
leaves the message in the stream, unacknowledged, without telling anyone: so
`modelport stream` sets it one above the worker's `max_deliveries`, and the worker
sees the last delivery and dead-letters it.

Publishing (outputs, dead letters) waits for JetStream's acknowledgement of each
message, and names it with a `Nats-Msg-Id` header built from its key: a result or a
dead letter published twice (a crash between publishing and acking) is stored once,
within the stream's duplicate window (2 minutes by default).

Streams that do not exist are created (`create_streams`): the input stream with
`subject`, and one per subject this broker publishes to, named after the subject.
In production they are usually provisioned beforehand, with their own limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import nats
import nats.errors as nx
import nats.js.errors as jx
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from modelport.connections import redact, unavailable
from modelport.errors import ConfigError, ModelportError
from modelport.streams.base import Broker, Message

log = logging.getLogger("modelport.stream.nats")

_OUTAGE = (nx.ConnectionClosedError, nx.NoServersError, nx.StaleConnectionError,
           nx.ConnectionReconnectingError, nx.OutboundBufferLimitError, nx.TimeoutError,
           nx.NoRespondersError, jx.ServiceUnavailableError)
PUBLISH_TIMEOUT_S = 30.0
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_-]")


class JetStreamBroker(Broker):
    """A worker of durable pull consumer `durable` on `stream`, reading `subject`.

    `max_deliver` is JetStream's bound on deliveries (-1: none); `max_ack_pending`
    bounds the messages handed out and not yet acknowledged across all workers.
    """

    name = "nats"

    def __init__(self, url: str, stream: str, subject: str, durable: str,
                 ack_wait: float = 30.0, max_deliver: int = -1, *,
                 max_ack_pending: int | None = None, create_streams: bool = True,
                 connect_timeout: float = 5.0) -> None:
        self.url = url
        self.stream = stream
        self.subject = subject
        self.durable = durable
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.max_ack_pending = max_ack_pending
        self.create_streams = create_streams
        self.connect_timeout = connect_timeout
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._bound: set[str] = set()  # subjects known to be in a stream

    @property
    def where(self) -> str:
        return f"NATS {redact(self.url)}"

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """The one place nats-py's exceptions become modelport errors."""
        try:
            yield
        except _OUTAGE as exc:
            raise unavailable(self.where, exc) from exc
        except nx.Error as exc:
            raise ModelportError(f"{self.where}, stream {self.stream!r}: "
                                 f"{exc.description if isinstance(exc, jx.APIError) else exc}"
                                 ) from exc

    async def _js_context(self) -> JetStreamContext:
        if self._js is None or self._nc is None or self._nc.is_closed:
            self._sub = None  # bound to the connection that is gone
            nc = await nats.connect(
                self.url, name=f"modelport {self.durable}",
                connect_timeout=max(1, round(self.connect_timeout)),
                # a server that is down now is an outage the worker backs off from ...
                max_reconnect_attempts=1, error_cb=self._on_error,
                disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect)
            # ... but a connection once made reconnects for ever, keeping its
            # subscription; nats-py reads this option at each reconnect
            nc.options["max_reconnect_attempts"] = -1
            self._nc, self._js = nc, nc.jetstream()
        return self._js

    async def _on_error(self, exc: Exception) -> None:
        log.warning("%s: %s", self.where, exc)

    async def _on_disconnect(self) -> None:
        if self._nc is not None and not (self._nc.is_closed or self._nc.is_draining):
            log.warning("%s: disconnected; reconnecting", self.where)

    async def _on_reconnect(self) -> None:
        log.info("%s: reconnected", self.where)

    async def start(self) -> None:
        with self.errors():
            await self._js_context()

    async def close(self) -> None:
        nc, self._nc, self._js, self._sub = self._nc, None, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(nx.Error, OSError):
                await nc.flush(timeout=2)  # acks still in the client's buffer
            with contextlib.suppress(nx.Error, OSError):
                await nc.close()

    # --- consuming ----------------------------------------------------------------------

    async def _subscription(self) -> JetStreamContext.PullSubscription:
        if self._sub is None:
            js = await self._js_context()
            if self.create_streams:
                await self._ensure_stream(self.stream, self.subject)
            config = ConsumerConfig(
                durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL, ack_wait=self.ack_wait,
                max_deliver=self.max_deliver, max_ack_pending=self.max_ack_pending,
                filter_subject=self.subject)
            try:  # creates it, or brings its ack wait and max deliveries up to date
                await js.add_consumer(self.stream, config)
            except jx.BadRequestError as exc:
                # a setting JetStream cannot change on a live consumer (its filter, its
                # deliver policy): use the consumer as it is, if there is one
                await js.consumer_info(self.stream, self.durable)
                log.warning("consumer %s keeps its settings (%s)", self.durable,
                            exc.description)
            self._sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        return self._sub

    async def _ensure_stream(self, stream: str, subject: str) -> None:
        if subject in self._bound:
            return
        js = await self._js_context()
        try:
            await js.stream_info(stream)
        except jx.NotFoundError:
            log.info("creating JetStream stream %s for subject %s", stream, subject)
            with contextlib.suppress(jx.BadRequestError):  # made by another worker meanwhile
                await js.add_stream(name=stream, subjects=[subject])
        self._bound.add(subject)

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        with self.errors():
            sub = await self._subscription()
            try:
                # nats-py asks the server to expire the pull 0.1 ms before `timeout`
                msgs = await sub.fetch(max_messages, timeout=max(timeout, 0.01))
            except TimeoutError:  # nats-py's own, or asyncio's from its lingering pull
                if self._nc is not None and not self._nc.is_connected:
                    raise nx.ConnectionReconnectingError() from None
                return []
        return [self._message(m) for m in msgs]

    @staticmethod
    def _message(msg: Msg) -> Message:
        meta = msg.metadata
        # the stream sequence: the same for every delivery of the message
        return Message(str(meta.sequence.stream), msg.data, meta.num_delivered,
                       headers=dict(msg.headers or {}), handle=msg)

    async def ack(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        with self.errors():
            await self._js_context()
            assert self._nc is not None
            for m in messages:
                # on the current connection, not the message's own (`msg.ack()`): a
                # message fetched before a reconnection is still acked after it; and
                # acking twice (a retry after an outage) is harmless
                await self._nc.publish(m.handle.reply, b"+ACK")
            # a round trip: the acks have reached the server when this returns
            await self._nc.flush(timeout=10)

    # --- publishing and lag -------------------------------------------------------------

    async def publish(self, subject: str, payloads: Sequence[bytes],
                      keys: Sequence[str] | None = None) -> None:
        if not payloads:
            return
        with self.errors():
            js = await self._js_context()
            if self.create_streams:
                await self._ensure_stream(_NOT_A_NAME.sub("_", subject), subject)
            futures: list[asyncio.Future[Any]] = []
            for i, payload in enumerate(payloads):
                # the subject in the id: keys of different subjects sharing a stream
                # (and a producer's own ids) cannot collide in its duplicate window
                headers = {"Nats-Msg-Id": f"{subject}:{keys[i]}"} if keys is not None else None
                futures.append(await js.publish_async(subject, payload, headers=headers))
            # no answer at all is an outage (TimeoutError), not a hang
            results = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), PUBLISH_TIMEOUT_S)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            with self.errors():
                raise failures[0]

    async def lag(self) -> int | None:
        """Messages not yet delivered to the consumer plus those awaiting an ack."""
        with self.errors():
            js = await self._js_context()
            try:
                info = await js.consumer_info(self.stream, self.durable)
            except jx.NotFoundError:
                return None
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


def check_max_deliver(max_deliver: int, max_deliveries: int) -> None:
    """JetStream must deliver a message once more than the worker processes it, or the
    worker never dead-letters it: it stays in the stream, unacknowledged, for good."""
    if 0 < max_deliver <= max_deliveries:
        raise ConfigError(
            f"stream.broker.max_deliver ({max_deliver}) must be more than max_deliveries "
            f"({max_deliveries}): after max_deliver deliveries JetStream stops delivering "
            "a message, so the worker would never dead-letter it")
