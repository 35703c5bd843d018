"""POST a JSON summary to a webhook (Slack, Teams, an alerting service, your own).

Retried with exponential backoff on what may pass (connection errors, timeouts, 429
and 5xx answers), never on other 4xx (a wrong URL or payload stays wrong). Messages
name the webhook by scheme and host only: its path often is its secret.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from modelport.connections import backoff_delay, redact
from modelport.errors import ConfigError, WebhookError

log = logging.getLogger("modelport.webhook")

MAX_RETRY_AFTER_S = 60.0


async def post_json(url: str, payload: dict[str, Any], *, timeout: float = 10.0,
                    retries: int = 3, backoff: float = 0.5, transport: Any = None) -> int:
    """POST `payload`; returns the answer's status. Raises WebhookError when every
    attempt failed (`retries` + 1 in all, waiting `backoff`, 2x`backoff`, …)."""
    try:
        import httpx
    except ImportError:
        raise ConfigError("posting to a webhook needs httpx: "
                          "pip install 'modelport[reports]'") from None
    if urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"webhook URL {url!r} is not an http(s) URL")
    where = redact(url, path=False)
    problem, delay = "", 0.0
    async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(delay)
            delay = backoff_delay(attempt, backoff)
            try:
                response = await client.post(url, json=payload)
            except httpx.HTTPError as exc:  # connection refused, DNS, timeouts
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code < 400:
                    return response.status_code
                problem = f"HTTP {response.status_code} {response.text[:200].strip()}".strip()
                if response.status_code != 429 and response.status_code < 500:
                    raise WebhookError(f"webhook {where} refused the report summary: "
                                       f"{problem}")
                delay = max(delay, _retry_after(response.headers.get("retry-after")))
            log.warning("webhook %s attempt %d of %d failed: %s", where, attempt + 1,
                        retries + 1, problem)
    raise WebhookError(f"webhook {where} failed after {retries + 1} attempts: {problem}")


def _retry_after(value: str | None) -> float:
    try:
        return min(float(value), MAX_RETRY_AFTER_S) if value else 0.0
    except ValueError:  # an HTTP date: honour it only roughly
        return 0.0
