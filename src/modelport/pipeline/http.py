"""An HTTP service as a retriever (httpx: the `http` extra).

Two contracts, chosen by the URL:

- **batch** (a plain URL): one request for all keys, `POST {"keys": [k, ...]}`, answered
  `{"rows": {"k": {"col": value, ...}, ...}}` or a list of records carrying the key
  in a field (`key`, default "id"), bare or as `{"rows": [...]}`. Keys absent from
  the answer have no data.
- **per key** (a URL template with `{key}`, e.g. `http://users/api/users/{key}`): one
  `GET` per key, at most `concurrency` at a time, answered with the record as a JSON
  object; 404 means no data for that key.

Connection errors, timeouts and 5xx answers are retried with exponential backoff
(`retries` times, from `backoff` seconds); once they run out the call fails with a
`NotReady` (503) naming the service. A 4xx is never retried (asking again would get
the same answer): it fails at once as a 502 that quotes the answer.

At start, and at each readiness check, the service must accept a connection (it is
asked nothing): an unreachable one stops `serve`, `batch` and `stream` at start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from modelport.connections import redact, retry, unavailable
from modelport.errors import BadGateway, ConfigError
from modelport.pipeline.base import Frame, Key, Retriever
from modelport.pipeline.columns import KeyMatch, frame_from_records, plain_keys


class _ServerError(Exception):
    """A 5xx answer: retried like a connection error."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"answered {response.status_code} {response.reason_phrase}")


class _Refused(Exception):
    """A 4xx answer (other than a per-key 404): our request is wrong; not retried."""

    def __init__(self, response: httpx.Response) -> None:
        body = response.text.strip().replace("\n", " ")
        super().__init__(f"answered {response.status_code} {response.reason_phrase}: "
                         f"{body[:200]}")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | _ServerError)


class HttpRetriever(Retriever):
    """Rows from an HTTP service (see the module's docstring for the two contracts).

    `method` defaults to POST for the batch contract and GET per key; `headers` go
    with every request (an `Authorization` header, say); `transport` replaces the
    network (tests pass an `httpx.MockTransport`).
    """

    def __init__(self, url: str, method: str | None = None, timeout: float = 2.0,
                 retries: int = 3, backoff: float = 0.1,
                 headers: Mapping[str, str] | None = None, key: str = "id",
                 concurrency: int = 16,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if retries < 0 or backoff < 0 or timeout <= 0 or concurrency < 1:
            raise ConfigError("http retriever: timeout and concurrency must be positive, "
                              "retries and backoff not negative")
        self.url, self.key = url, key
        self.per_key = "{key}" in url
        self.method = (method or ("GET" if self.per_key else "POST")).upper()
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.headers = dict(headers or {})
        self.concurrency = concurrency
        self.transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers=self.headers, timeout=self.timeout, transport=self.transport,
                limits=httpx.Limits(max_connections=self.concurrency))
        return self._client

    @property
    def where(self) -> str:
        return f"HTTP service {redact(self.url)}"

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except (httpx.TransportError, _ServerError) as exc:
            raise unavailable(self.where, exc) from exc
        except _Refused as exc:
            raise BadGateway(f"{self.where} {exc}") from exc
        except httpx.InvalidURL as exc:
            raise ConfigError(f"http retriever: {redact(self.url)!r}: {exc}") from exc

    async def start(self) -> None:
        self.client  # noqa: B018 - opens the connection pool
        await self.check()

    async def check(self) -> None:
        """The service accepts a connection: asks it nothing (no request is safe to
        send to every feature service), so an unreachable one is refused at start and
        reported not ready. A `transport` replaces the network: nothing to check."""
        if self.transport is not None:
            return
        with self.errors():
            try:
                url = httpx.URL(self.url.replace("{key}", "key"))
            except ValueError as exc:  # urllib's, for a malformed host
                raise httpx.InvalidURL(str(exc)) from None
            if url.scheme not in ("http", "https") or not url.host:
                raise httpx.InvalidURL("not an http:// or https:// URL")
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(url.host, port), self.timeout)
            except (OSError, TimeoutError) as exc:
                raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def get(self, keys: Sequence[Key]) -> Frame:
        if not keys:
            return Frame([], {})
        with self.errors():
            if self.per_key:
                return await self._each(keys)
            return await self._batch(keys)

    async def _request(self, url: str, *, body: Any = None, missing_ok: bool = False
                       ) -> httpx.Response | None:
        async def once() -> httpx.Response:
            response = await self.client.request(self.method, url, json=body)
            if response.status_code >= 500:
                raise _ServerError(response)
            return response

        response = await retry(once, retries=self.retries, backoff=self.backoff,
                               transient=_transient)
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            raise _Refused(response)
        return response

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise self._broken("a body that is not JSON") from None

    def _broken(self, what: str) -> BadGateway:
        return BadGateway(f"{self.where} answered with {what}; expected "
                              + ("a JSON object per key" if self.per_key else
                                 f'{{"rows": {{key: {{column: value}}}}}} or a list of '
                                 f"records with a {self.key!r} field"))

    async def _batch(self, keys: Sequence[Key]) -> Frame:
        response = await self._request(self.url, body={"keys": plain_keys(keys)})
        assert response is not None
        answer = self._json(response)
        rows = answer.get("rows") if isinstance(answer, dict) else answer
        match = KeyMatch(keys)
        found: list[Key] = []
        records: list[Mapping[str, Any]] = []
        if isinstance(rows, dict):
            pairs = list(rows.items())
        elif isinstance(rows, list) and all(isinstance(r, dict) and self.key in r
                                            for r in rows):
            pairs = [(r[self.key], {c: v for c, v in r.items() if c != self.key})
                     for r in rows]
        else:
            raise self._broken(f"a JSON {type(rows).__name__} under 'rows'"
                               if isinstance(answer, dict) else
                               "records without the key field" if isinstance(rows, list)
                               else f"a JSON {type(answer).__name__}")
        for returned, record in pairs:
            key = match(returned)
            if key is None:
                continue  # a row nobody asked for
            if not isinstance(record, dict):
                raise self._broken(f"a JSON {type(record).__name__} for key {returned!r}")
            found.append(key)
            records.append(record)
        return frame_from_records(found, records)

    async def _each(self, keys: Sequence[Key]) -> Frame:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(key: Key) -> Mapping[str, Any] | None:
            async with gate:
                url = self.url.replace("{key}", quote(str(key), safe=""))
                response = await self._request(url, missing_ok=True)
            if response is None:
                return None
            record = self._json(response)
            if not isinstance(record, dict):
                raise self._broken(f"a JSON {type(record).__name__} for key {key!r}")
            return record

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(k)) for k in keys]
        except ExceptionGroup as exc:
            # the first failure stands for all: the group cancelled the other requests
            raise exc.exceptions[0] from None
        found = [(k, t.result()) for k, t in zip(keys, tasks, strict=True)]
        return frame_from_records([k for k, r in found if r is not None],
                      [r for _, r in found if r is not None])
