"""Redis: the one place redis-py's exceptions become modelport errors (the Redis
retriever and writer, and the Redis Streams broker, share it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis import exceptions as redis_exc

from modelport.connections import unavailable
from modelport.errors import ModelportError


@contextlib.contextmanager
def redis_errors(where: str, about: str = "") -> Iterator[None]:
    """An outage (the server down or still loading, a connection lost, a timeout) is a
    `NotReady` naming `where`; any other error names `where` and what it was `about`."""
    try:
        yield
    except (redis_exc.ConnectionError, redis_exc.TimeoutError, OSError) as exc:
        raise unavailable(where, exc) from exc
    except redis_exc.RedisError as exc:
        raise ModelportError(f"{where}{about}: {exc}") from exc
