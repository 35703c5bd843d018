"""Backing services that fail: naming them safely, retrying, and the 503 it ends in.

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


def redact(url: str) -> str:
    """The URL as it may appear in messages and logs: never with its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def unavailable(service: str, exc: BaseException) -> NotReady:
    """The 503 for a service that cannot be reached; `service` names it, e.g.
    `"Redis redis://cache:6379/0"`."""
    detail = str(exc).strip().splitlines()
    return NotReady(f"{service} is unavailable: {detail[0] if detail else type(exc).__name__}")


def delay(attempt: int, backoff: float, cap: float = 5.0) -> float:
    """Exponential backoff with jitter: about backoff·2^attempt, never above `cap`.

    Half the delay is random so that replicas retrying the same outage spread out
    instead of arriving together."""
    base = min(cap, backoff * 2.0 ** attempt)
    return base / 2 + random.uniform(0, base / 2)


async def retry(call: Callable[[], Awaitable[T]], *, retries: int, backoff: float,
                transient: Callable[[BaseException], bool]) -> T:
    """Await `call()`, again after a growing pause while it fails with a transient error,
    at most `retries` more times; the last failure propagates."""
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if attempt >= retries or not transient(exc):
                raise
        await asyncio.sleep(delay(attempt, backoff))
        attempt += 1
