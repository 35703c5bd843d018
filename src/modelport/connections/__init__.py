"""Outside systems modelport talks to: naming them safely, their outages, retrying.

The bottom layer (above only settings and errors), so pipeline components, brokers,
the registry and monitoring share one way of doing these without importing each
other. SQL engines and the translation of SQLAlchemy's errors are in
`modelport.connections.sql`, which imports SQLAlchemy.

A component never lets a driver's connection error escape: it becomes a `NotReady`
(HTTP 503) whose message names the service and its URL without the password. The
component keeps its pool or client, which reconnect on the next call, so an outage
gives clear errors for its duration and no restart afterwards.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from modelport.errors import NotReady

T = TypeVar("T")

_MAX_DOUBLINGS = 64
"""Past this many doublings every pause is at its cap (and 2.0**1024 overflows)."""


def redact(url: str, *, path: bool = True) -> str:
    """The URL as it may appear in messages and logs: never with its password, nor with
    its path when `path` is false (a webhook's path often is its secret)."""
    parts = urlsplit(url)
    if not path:
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def first_line(exc: BaseException) -> str:
    """An error's first line, for one-line messages; for a wrapped driver error
    (SQLAlchemy's, with its `orig`) the driver's own, without the SQL echoed after it."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unavailable(service: str, exc: BaseException) -> NotReady:
    """The 503 for a service that cannot be reached; `service` names it, e.g.
    `"Redis redis://cache:6379/0"`."""
    return NotReady(f"{service} is unavailable: {first_line(exc)}")


def backoff_delay(attempt: int, first: float, *, cap: float = float("inf"),
                  jitter: bool = False) -> float:
    """The pause after failed attempt number `attempt` (0 for the first): `first`·2^attempt,
    never above `cap`.

    With `jitter`, half the pause is random so that replicas retrying the same outage
    spread out instead of arriving together."""
    base = min(cap, first * 2.0 ** min(attempt, _MAX_DOUBLINGS))
    return base / 2 + random.uniform(0, base / 2) if jitter else base


async def retry(call: Callable[[], Awaitable[T]], *, retries: int, backoff: float,
                transient: Callable[[BaseException], bool], cap: float = 5.0) -> T:
    """Await `call()`, again after a growing pause (with jitter, at most `cap` seconds)
    while it fails with a transient error, at most `retries` more times; the last
    failure propagates."""
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if attempt >= retries or not transient(exc):
                raise
        await asyncio.sleep(backoff_delay(attempt, backoff, cap=cap, jitter=True))
        attempt += 1


__all__ = ["backoff_delay", "first_line", "redact", "retry", "unavailable"]
