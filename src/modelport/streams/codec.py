"""Message payloads: JSON by default, msgpack as an option, Avro through a `Format`.

A payload is a record (`{"age": 41, …}`), a row in input order (`[41, …]`), or an
envelope `{"id": "…", "key": "…", "data": <record or row>}`. The envelope's `id` is
what the writer keys on (so a redelivery overwrites, never duplicates); without one
the broker's message id is used. `key` travels to the writer as a column.

`decode` reads any of these into Python values, which the model's signature then
checks column by column, naming what is wrong. `TypedDecoder` is the fast path for the
common stream, where every message is a record of exactly the model's inputs, all of
one numeric type: msgspec reads it against a struct made from the signature straight
into a tuple in input order (no dict per message, no check per column), and a batch of
those becomes one array. A message it refuses goes the general way.

A `Format` is a payload format that needs more than the bytes: Avro (`streams.avro`),
whose schemas a registry holds. The worker asks it to `resolve` a batch first (an
outage is retried there), then reads each payload with it.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec
import numpy as np
import orjson

from modelport.datatypes import to_numpy
from modelport.errors import InvalidInput
from modelport.signature import Signature
from modelport.streams.base import Message

Codec = Literal["json", "msgpack"]
_ENVELOPE = frozenset({"id", "key", "data"})


@dataclass(slots=True)
class Decoded:
    id: str
    key: Any
    data: Any


class Format(Protocol):
    """A payload format that needs more than the bytes (Avro and its schemas)."""

    name: str

    async def resolve(self, messages: Sequence[Message]) -> None:
        """Prepare to read these messages (schemas asked of a registry); `NotReady`
        when a service it needs is down."""

    def read(self, payload: bytes) -> Any:
        """The payload's value; `InvalidInput` naming what is wrong."""

    def typed(self, signature: Signature | None) -> Typed | None:
        """The fast path for this model's inputs, None where it does not apply."""


def decode(message: Message, codec: Codec | Format = "json") -> Decoded:
    if not isinstance(codec, str):
        body = codec.read(message.payload)
    else:
        try:
            if codec == "msgpack":
                body = msgspec.msgpack.decode(message.payload)
            else:
                body = orjson.loads(message.payload)
        except Exception as exc:
            raise InvalidInput(f"payload is not valid {codec}: {exc}") from None
    if isinstance(body, dict) and "data" in body:
        if not body.keys() <= _ENVELOPE:  # a set comparison without building a set
            unknown = sorted(set(body) - _ENVELOPE)
            raise InvalidInput(f"envelope has unknown fields {unknown}")
        ident = body.get("id", message.id)
        if not isinstance(ident, str | int) or isinstance(ident, bool):
            raise InvalidInput(f"envelope id must be a string or integer, got {ident!r}")
        return Decoded(str(ident), body.get("key"), body["data"])
    if isinstance(body, dict | list):
        return Decoded(message.id, None, body)
    what = "a JSON object or array" if isinstance(codec, str) else "a record or an array"
    raise InvalidInput(f"expected {what}, got {type(body).__name__}")


def encode(value: Any, codec: Codec = "json") -> bytes:
    if codec == "msgpack":
        return msgspec.msgpack.encode(value)
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def typed_inputs(signature: Signature | None) -> tuple[list[str], np.dtype[Any]] | None:
    """The model's input names and their one numeric type, where a typed path applies:
    not a tensor model, inputs of one numeric type, no shaped input, NaN refused, no
    input named like an envelope field."""
    if signature is None or signature.layout != "columns" or signature.allow_nan:
        return None
    inputs = signature.inputs
    kinds = {s.datatype for s in inputs}
    if len(kinds) != 1 or any(s.shape for s in inputs) \
            or any(s.name in _ENVELOPE for s in inputs):
        return None
    dtype = to_numpy(kinds.pop())
    if dtype.kind not in "fiub":
        return None
    return [s.name for s in inputs], dtype


class Typed:
    """A typed fast path: messages of the model's inputs read as values in input order
    (`decode`, `decode_all`), and those values as one array (`table`)."""

    def __init__(self, names: Sequence[str], dtype: np.dtype[Any]) -> None:
        self.names = list(names)
        self.dtype = dtype

    def decode(self, message: Message) -> tuple[str, Any, tuple[Any, ...]] | None:
        """The message's id, key and values in input order; None to go the general way."""
        raise NotImplementedError

    def decode_all(self, messages: Sequence[Message]
                   ) -> tuple[list[str], list[Any] | None, np.ndarray] | None:
        """A batch of one shape in one go: the ids, the keys (None when no message has
        one) and the table of values; None to go message by message."""
        raise NotImplementedError

    def table(self, rows: Sequence[tuple[Any, ...]]) -> np.ndarray | None:
        """Decoded values as one array, a row per message and a column per input; None
        when an integer does not fit the array's type (the signature's check says so)."""
        return self._flat(rows, len(rows))

    def _flat(self, rows: Iterable[tuple[Any, ...]], n: int) -> np.ndarray | None:
        width = len(self.names)
        try:
            # one pass over the values in row order: faster than np.array,
            # which first works out the nesting
            flat = np.fromiter(itertools.chain.from_iterable(rows), self.dtype, n * width)
        except (OverflowError, ValueError):
            return None
        return flat.reshape(n, width)


class TypedDecoder(Typed):
    """Records of exactly the model's inputs, all of one numeric type, as tuples.

    Build it with `for_signature`, which says None where the path does not apply: a
    tensor model, inputs of several types, strings, shaped inputs, a model taking NaN
    (null), or an input named like an envelope field. `decode` answers None for a
    message the struct refuses: invalid JSON, a missing or extra field, a value of
    another type (a string, a boolean for a number), a row instead of a record. It
    never accepts what the general path would refuse, except values the signature's
    own check still sees: the array is validated like any other (a non-finite float,
    an integer out of the column's range)."""

    def __init__(self, names: Sequence[str], field_type: type, dtype: np.dtype[Any],
                 codec: Codec) -> None:
        super().__init__(names, dtype)
        # field names are f0, f1, … (an input name need not be an identifier), renamed
        # to the inputs' names on the wire; unknown fields are refused, not dropped
        row = msgspec.defstruct(
            "Record", [(f"f{i}", field_type) for i in range(len(names))],
            rename={f"f{i}": n for i, n in enumerate(names)},
            forbid_unknown_fields=True, gc=False)
        envelope = msgspec.defstruct(
            # an id absent is the broker's; null is refused, as the general path does
            "Envelope", [("data", row), ("id", str | int | msgspec.UnsetType, msgspec.UNSET),
                         ("key", Any, None)],
            forbid_unknown_fields=True, gc=False)
        module = msgspec.msgpack if codec == "msgpack" else msgspec.json
        self._envelope = module.Decoder(envelope)
        self._record = module.Decoder(row)
        self._astuple = msgspec.structs.astuple
        self._enveloped = True
        """Whether the last message decoded came in an envelope: that shape is tried
        first (a stream's producers send one shape)."""

    @classmethod
    def for_signature(cls, signature: Signature | None, codec: Codec) -> TypedDecoder | None:
        found = typed_inputs(signature)
        if found is None:
            return None
        names, dtype = found
        field_type = {"f": float, "i": int, "u": int, "b": bool}[dtype.kind]
        return cls(names, field_type, dtype, codec)

    def decode(self, message: Message) -> tuple[str, Any, tuple[Any, ...]] | None:
        """The message's id, key and values in input order; None to go the general way."""
        first, second = (self._envelope, self._record) if self._enveloped else \
            (self._record, self._envelope)
        for decoder in (first, second):
            try:
                body = decoder.decode(message.payload)
            except (msgspec.ValidationError, msgspec.DecodeError):
                continue
            self._enveloped = decoder is self._envelope
            if self._enveloped:
                ident = message.id if body.id is msgspec.UNSET else str(body.id)
                return ident, body.key, self._astuple(body.data)
            return message.id, None, self._astuple(body)
        return None

    def decode_all(self, messages: Sequence[Message]
                   ) -> tuple[list[str], list[Any] | None, np.ndarray] | None:
        """A batch of one shape in one go: the ids, the keys (None when no message has
        one) and the table of values; None when a message is not of the shape the
        last one was, to go message by message."""
        enveloped = self._enveloped
        decode = (self._envelope if enveloped else self._record).decode
        try:
            bodies = list(map(decode, map(_payload, messages)))
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        ids: list[Any]
        if not enveloped:
            ids, keys, records = [m.id for m in messages], None, bodies
        else:
            ids = list(map(_id, bodies))
            if set(map(type, ids)) != {str}:  # the broker's id where absent; integers
                ids = [m.id if i is msgspec.UNSET else str(i)
                       for m, i in zip(messages, ids, strict=True)]
            keys = list(map(_key, bodies))
            if keys.count(None) == len(keys):
                keys = None
            records = list(map(_data, bodies))
        table = self._flat(map(self._astuple, records), len(records))
        return None if table is None else (ids, keys, table)


_payload = operator.attrgetter("payload")
_id = operator.attrgetter("id")
_key = operator.attrgetter("key")
_data = operator.attrgetter("data")
