"""Message payloads: JSON by default, msgpack as an option.

A payload is a record (`{"age": 41, …}`), a row in input order (`[41, …]`), or an
envelope `{"id": "…", "key": "…", "data": <record or row>}`. The envelope's `id` is
what the writer keys on (so a redelivery overwrites, never duplicates); without one
the broker's message id is used. `key` travels to the writer as a column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from modelport.errors import InvalidInput
from modelport.streams.base import Message

Codec = Literal["json", "msgpack"]
_ENVELOPE = frozenset({"id", "key", "data"})


@dataclass
class Decoded:
    id: str
    key: Any
    data: Any


def decode(message: Message, codec: Codec = "json") -> Decoded:
    try:
        if codec == "msgpack":
            import msgpack

            body = msgpack.unpackb(message.payload, raw=False)
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
    raise InvalidInput(f"expected a JSON object or array, got {type(body).__name__}")


def encode(value: Any, codec: Codec = "json") -> bytes:
    if codec == "msgpack":
        import msgpack

        packed: bytes = msgpack.packb(value, use_bin_type=True)
        return packed
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
