"""Avro messages: bare bodies of one schema, or Confluent's wire format with a registry.

With `avro: {schema: ...}` every payload is an Avro body of that schema. With
`avro: {registry_url: ...}` a payload is in Confluent's wire format — a zero byte, the
schema's id (4 bytes, big-endian), then the Avro body — and the schema is asked of a
Confluent-compatible schema registry (`GET /schemas/ids/{id}`) once per id: an id's
schema never changes, so it is kept for the life of the worker.

A payload read is a record (or an array), which then goes the way a JSON one goes: an
envelope record (`id`, `key`, `data`), a record of the model's inputs, a row. What
cannot be read — not the wire format, an id the registry does not know, a body
shorter or longer than its schema says — is refused naming it, and dead-lettered. A
registry that cannot be reached (or answers 5xx) is an outage (`NotReady`): the
worker holds the batch and retries with its backoff, dead-lettering nothing.

`AvroTyped` is the typed fast path: a writer schema that is a record of exactly the
model's inputs, each of a numeric type the inputs take, is read straight into values
in input order, and a batch of them into one array.

Results are written with `AvroWriter`: the schema given, or one made from the result
columns (a record `Result` with `id` and a nullable field per column), registered
under the output subject when there is a registry (`POST /subjects/{s}/versions`).
"""

from __future__ import annotations

import io
import json
import operator
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import fastavro
import numpy as np

from modelport.config import AvroConfig
from modelport.connections import redact, unavailable
from modelport.errors import ConfigError, InvalidInput
from modelport.signature import Signature
from modelport.streams.base import Message
from modelport.streams.codec import Typed, typed_inputs

HEADER = struct.Struct(">bI")
"""Confluent's wire format: magic byte 0, the schema id as a big-endian uint32."""
_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_NUMERIC = {"f": {"double", "float", "int", "long"}, "i": {"int", "long"},
            "u": {"int", "long"}, "b": {"boolean"}}
"""Avro types the typed path reads into inputs of each numpy kind."""


def parse(schema: Any, what: str) -> dict[str, Any]:
    """An Avro schema (a mapping, or its JSON text) parsed; a `ConfigError` naming
    `what` when it is not one."""
    try:
        if isinstance(schema, str):
            schema = json.loads(schema)
        parsed = fastavro.parse_schema(schema)
    except Exception as exc:
        raise ConfigError(f"{what}: not an Avro schema: {exc}") from None
    if not isinstance(parsed, dict):  # a bare primitive ("double") or a union
        raise ConfigError(f"{what}: expected a record (or another named or complex "
                          f"type), got {parsed!r}")
    return parsed


class SchemaRegistry:
    """A Confluent-compatible schema registry's REST API: schemas by id (kept once
    read), and schemas registered under a subject (their ids kept)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.schemas: dict[int, dict[str, Any]] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def __str__(self) -> str:
        return f"schema registry {redact(self.url)}"

    async def fetch(self, ids: Sequence[int]) -> dict[int, str]:
        """Read the schemas of `ids` not read yet; why each one that cannot be used
        cannot (unknown to the registry, not Avro). `NotReady` when it cannot be asked."""
        import httpx

        refused: dict[int, str] = {}
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for ident in ids:
                if ident in self.schemas:
                    continue
                reply = await self._call(client, "GET", f"/schemas/ids/{ident}")
                if reply.status_code == 404:
                    refused[ident] = f"unknown schema id {ident} ({self} does not have it)"
                    continue
                body = self._check(reply, f"GET /schemas/ids/{ident}")
                kind = body.get("schemaType", "AVRO")
                if kind != "AVRO":
                    refused[ident] = f"schema id {ident} is a {kind} schema, not Avro"
                    continue
                try:
                    self.schemas[ident] = parse(body.get("schema"), f"schema id {ident}")
                except ConfigError as exc:
                    refused[ident] = exc.message
        return refused

    async def register(self, subject: str, schema: Any) -> int:
        """The id of `schema` under `subject`, registering it (once) if need be."""
        import httpx

        text = json.dumps(schema, sort_keys=True)
        if (subject, text) not in self._ids:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                path = f"/subjects/{subject}/versions"
                reply = await self._call(client, "POST", path, json={"schema": text})
                body = self._check(reply, f"POST {path}")
                if not isinstance(body.get("id"), int):
                    raise ConfigError(f"{self}: POST {path} answered no schema id: {body}")
                self._ids[subject, text] = body["id"]
        return self._ids[subject, text]

    async def _call(self, client: Any, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            reply = await client.request(method, self.url + path,
                                         headers={"Accept": _CONTENT_TYPE}, **kw)
        except httpx.HTTPError as exc:
            raise unavailable(str(self), exc) from None
        if reply.status_code >= 500:
            raise unavailable(str(self), RuntimeError(f"{method} {path} answered "
                                                      f"{reply.status_code}"))
        return reply

    def _check(self, reply: Any, what: str) -> dict[str, Any]:
        """The reply's JSON object. Any other answer is neither an outage nor the
        message's fault (a wrong URL, credentials, an incompatible output schema, not
        a registry): a `ConfigError` naming the call, which stops the worker."""
        try:
            body = reply.json()
        except ValueError:
            body = None
        if reply.status_code >= 300:
            detail = body.get("message", reply.text) if isinstance(body, dict) else reply.text
            raise ConfigError(f"{self}: {what} answered {reply.status_code}: {detail}")
        if not isinstance(body, dict):
            raise ConfigError(f"{self}: {what} answered {reply.text[:80]!r}, not a JSON "
                              "object: is this a schema registry?")
        return body


class AvroFormat:
    """Avro input payloads (a `Format` of `modelport.streams.codec`): bare bodies of
    `schema`, or with a `registry`, Confluent's wire format."""

    name = "avro"

    def __init__(self, schema: dict[str, Any] | None = None,
                 registry: SchemaRegistry | None = None) -> None:
        if (schema is None) == (registry is None):
            raise ConfigError("avro: give a schema or a registry_url (one of them)")
        self.schema = schema
        self.registry = registry
        self._refused: dict[int, str] = {}

    @classmethod
    def from_config(cls, config: AvroConfig) -> AvroFormat:
        schema = parse(config.schema_, "avro.schema") if config.schema_ else None
        registry = SchemaRegistry(config.registry_url, config.timeout) \
            if config.registry_url and schema is None else None
        return cls(schema, registry)

    async def resolve(self, messages: Sequence[Message]) -> None:
        """Ask the registry for the schemas of these messages' ids not known yet."""
        if self.registry is None:
            return
        wanted = set()
        for m in messages:
            if len(m.payload) >= HEADER.size and m.payload[0] == 0:
                wanted.add(HEADER.unpack_from(m.payload)[1])
        new = sorted(i for i in wanted if i not in self.registry.schemas)
        if new:
            # an id refused now is asked again in a later batch (it may be registered)
            self._refused = await self.registry.fetch(new)

    def split(self, payload: bytes) -> tuple[dict[str, Any], int, str]:
        """The writer schema of a payload, where its body starts, and what to call it."""
        if self.schema is not None:
            return self.schema, 0, "the configured schema"
        assert self.registry is not None
        if len(payload) < HEADER.size:
            raise InvalidInput(f"payload is not in the Confluent wire format: {len(payload)} "
                               f"bytes, shorter than its {HEADER.size}-byte header")
        magic, ident = HEADER.unpack_from(payload)
        if magic != 0:
            raise InvalidInput("payload is not in the Confluent wire format: its first byte "
                               f"is {magic:#04x}, not the magic byte 0x00")
        schema = self.registry.schemas.get(ident)
        if schema is None:
            raise InvalidInput(self._refused.get(ident, f"unknown schema id {ident}"))
        return schema, HEADER.size, f"schema id {ident}"

    def read(self, payload: bytes) -> Any:
        schema, start, what = self.split(payload)
        return _body(payload, start, schema, what)

    def typed(self, signature: Signature | None) -> AvroTyped | None:
        inputs = typed_inputs(signature)
        return None if inputs is None else AvroTyped(self, *inputs)


def _body(payload: bytes, start: int, schema: dict[str, Any], what: str) -> Any:
    stream = io.BytesIO(payload)
    stream.seek(start)
    try:
        value = fastavro.schemaless_reader(stream, schema, None)
    except EOFError:
        raise InvalidInput(f"Avro body is truncated: {len(payload) - start} bytes, too "
                           f"few for a record of {what}") from None
    except Exception as exc:
        raise InvalidInput(f"Avro body does not fit {what}: "
                           f"{type(exc).__name__}: {exc}") from None
    left = len(payload) - stream.tell()
    if left:
        raise InvalidInput(f"Avro body does not fit {what}: {left} bytes are left "
                           "after its record")
    return value


class AvroTyped(Typed):
    """Records whose writer schema holds exactly the model's inputs, of numeric types
    they take, as values in input order; None (the general way) for any other.

    A record of doubles and floats only has a fixed width: it is unpacked with one
    `struct` call (fastavro's reader costs tens of microseconds a call, whatever the
    record); one of another kind is read by fastavro."""

    def __init__(self, avro: AvroFormat, names: Sequence[str], dtype: np.dtype[Any]) -> None:
        super().__init__(names, dtype)
        self.avro = avro
        self._values = operator.itemgetter(*self.names)
        self._layouts: dict[int, _Layout | None] = {}
        """Per schema (by id of the parsed dict, which the format keeps): how to read
        it, None when it is not a record of the inputs."""

    def _layout(self, schema: dict[str, Any]) -> _Layout | None:
        key = id(schema)
        if key not in self._layouts:
            self._layouts[key] = _Layout.of(schema, self.names, self.dtype.kind)
        return self._layouts[key]

    def _read(self, message: Message) -> tuple[Any, ...] | None:
        payload = message.payload
        try:
            schema, start, what = self.avro.split(payload)
            layout = self._layout(schema)
            if layout is None:
                return None
            if layout.fixed is not None:  # any other length: the general way names it
                if len(payload) - start != layout.fixed.size:
                    return None
                return layout.order(layout.fixed.unpack_from(payload, start))
            record = _body(payload, start, schema, what)
        except InvalidInput:
            return None
        values = self._values(record)
        return values if isinstance(values, tuple) else (values,)

    def decode(self, message: Message) -> tuple[str, Any, tuple[Any, ...]] | None:
        values = self._read(message)
        return None if values is None else (message.id, None, values)

    def decode_all(self, messages: Sequence[Message]
                   ) -> tuple[list[str], list[Any] | None, np.ndarray] | None:
        rows = []
        for message in messages:
            values = self._read(message)
            if values is None:
                return None
            rows.append(values)
        table = self.table(rows)
        return None if table is None else ([m.id for m in messages], None, table)


class _Layout:
    """How the typed path reads a record of the inputs: `fixed`, the struct of one
    whose fields are all doubles and floats (else None: fastavro reads it), and
    `order`, which takes its values in the inputs' order."""

    def __init__(self, fixed: struct.Struct | None,
                 order: Callable[[tuple[Any, ...]], tuple[Any, ...]]) -> None:
        self.fixed = fixed
        self.order = order

    @classmethod
    def of(cls, schema: Mapping[str, Any], names: Sequence[str], kind: str) -> _Layout | None:
        if schema.get("type") != "record":
            return None
        fields = schema.get("fields", [])
        if sorted(f["name"] for f in fields) != sorted(names):
            return None
        types = []
        for f in fields:
            t = f["type"]
            if isinstance(t, dict) and "logicalType" not in t:
                t = t.get("type")
            if not isinstance(t, str) or t not in _NUMERIC.get(kind, set()):
                return None
            types.append(t)
        position = {f["name"]: i for i, f in enumerate(fields)}
        order = operator.itemgetter(*(position[n] for n in names)) if len(names) > 1 \
            else _single
        fixed = struct.Struct("<" + "".join("d" if t == "double" else "f" for t in types)) \
            if set(types) <= {"double", "float"} else None
        return cls(fixed, order)


def _single(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return values


class AvroWriter:
    """Result rows as Avro payloads: of the schema given, or of one made from the
    first results' columns; in the wire format under the schema's id in `subject`
    when there is a registry, else bare bodies."""

    def __init__(self, config: AvroConfig, subject: str) -> None:
        given = config.output_schema
        if isinstance(given, str):
            try:
                given = json.loads(given)
            except ValueError as exc:
                raise ConfigError(f"avro.output_schema: not JSON: {exc}") from None
        self.schema = (given, parse(given, "avro.output_schema")) if given else None
        """The schema as registered, and parsed."""
        self.registry = SchemaRegistry(config.registry_url, config.timeout) \
            if config.registry_url else None
        self.subject = config.output_subject or f"{subject}-value"  # TopicNameStrategy
        self._derived: dict[tuple[str, ...], tuple[Any, dict[str, Any]]] = {}

    async def encode(self, rows: Sequence[Mapping[str, Any]]) -> list[bytes]:
        if not rows:
            return []
        pair = self.schema
        if pair is None:  # made once per set of columns (envelopes add a `key`)
            names = tuple(rows[0])
            pair = self._derived.get(names)
            if pair is None:
                raw = result_schema(rows)
                pair = self._derived[names] = (raw, parse(raw, "the results' schema"))
        raw, schema = pair
        header = b""
        if self.registry is not None:
            header = HEADER.pack(0, await self.registry.register(self.subject, raw))
        out = []
        for row in rows:
            buffer = io.BytesIO()
            buffer.write(header)
            try:
                fastavro.schemaless_writer(buffer, schema, row)
            except Exception as exc:
                raise InvalidInput(f"result {row.get('id')!r} does not fit the output "
                                   f"Avro schema: {type(exc).__name__}: {exc}") from None
            out.append(buffer.getvalue())
        return out


def result_schema(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A record schema for result rows: `id` a string, each other column nullable (a
    NaN is written as null), of the type of its first value that is not null."""
    fields: list[dict[str, Any]] = [{"name": "id", "type": "string"}]
    for name in rows[0]:
        if name != "id":
            value = next((r[name] for r in rows if r[name] is not None), "")
            fields.append({"name": name, "type": ["null", _avro_type(name, value)],
                           "default": None})
    return {"type": "record", "name": "Result", "namespace": "modelport",
            "fields": fields}


def _avro_type(name: str, value: Any) -> Any:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, list) and value:
        return {"type": "array", "items": _avro_type(name, value[0])}
    raise ConfigError(f"avro: cannot make an Avro type for result column {name!r} from "
                      f"{value!r}; give avro.output_schema")
