"""Open Inference Protocol v2 on the wire: requests in, tensors as numpy, responses out.

Pure functions, no HTTP. A request body is a JSON object, optionally followed by
binary tensor data (Triton's binary tensor data extension: the
`Inference-Header-Content-Length` header says where the JSON ends, each input's
`parameters.binary_data_size` how many of the following bytes are its tensor).
Binary tensors are little-endian, row-major; BOOL is one byte per element; BYTES
elements each carry a 4-byte little-endian length prefix.

Numeric tensors never take a per-element Python loop on the fast path: binary data
is read with `np.frombuffer`, JSON data with `np.asarray` (falling back to the
careful, slower `coerce` only when the values need it, to name the bad one).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelport.datatypes import DATATYPES, coerce, from_numpy, to_numpy
from modelport.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True)
class Tensor:
    """One request input: its name, the datatype it was sent as, and its values."""

    name: str
    datatype: str
    data: np.ndarray


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None
    """`parameters.binary_data`; None follows the request's `binary_data_output`."""


@dataclass
class InferRequest:
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None
    """None: every output the model returns."""
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def binary_output(self) -> bool:
        return self.parameters.get("binary_data_output") is True


# --- reading a request ----------------------------------------------------------------


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a request's `Content-Encoding` (gzip, deflate), never past `limit` bytes."""
    name = (encoding or "").strip().lower()
    if name in ("", "identity"):
        return body
    wbits = _WBITS.get(name)
    if wbits is None:
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; "
                                   "send gzip, deflate or an uncompressed body")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {name} data: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed request body is larger than the limit of "
                              f"{limit} bytes")
    if not inflater.eof:
        raise InvalidInput(f"request body is truncated {name} data")
    return out


def header_length(value: str | None, body_size: int) -> int | None:
    """The `Inference-Header-Content-Length` header, checked against the body."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or int(value) > body_size:
        raise InvalidInput(f"{HEADER_LENGTH} must be a byte count within the body "
                           f"({body_size} bytes), got {value!r}")
    return int(value)


def parse_request(body: bytes, json_length: int | None = None) -> InferRequest:
    """Read an inference request: JSON, or JSON then binary tensor data."""
    view = memoryview(body)
    head = view if json_length is None else view[:json_length]
    binary = view[len(head):]
    if not head:
        raise InvalidInput("request body is empty: expected a JSON inference request")
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"inference request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("inference request must be a JSON object with \"inputs\"")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inference request needs \"inputs\": a non-empty list of tensors")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("\"id\" must be a string")
    inputs: list[Tensor] = []
    offset = 0
    for i, raw in enumerate(raw_inputs):
        tensor, offset = _read_input(raw, i, binary, offset)
        if any(t.name == tensor.name for t in inputs):
            raise InvalidInput(f"input {tensor.name!r} is sent twice")
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the last "
                           "input's binary_data_size")
    outputs = _read_outputs(doc.get("outputs"))
    return InferRequest(inputs, outputs, request_id, _parameters(doc.get("parameters"),
                                                                   "request"))


def _read_input(raw: Any, index: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise InvalidInput(f"inputs[{index}] needs a \"name\", \"shape\", \"datatype\" and "
                           "\"data\"")
    name: str = raw["name"]
    where = f"input {name!r}"
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidInput(f"{where}: unknown datatype {datatype!r}; "
                           f"expected one of {', '.join(DATATYPES)}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"{where}: \"shape\" must be a list of sizes, got {shape!r}")
    params = _parameters(raw.get("parameters"), where)
    if any(k.startswith("shared_memory") for k in params):
        raise InvalidInput(f"{where}: shared memory is not supported; send the data")
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise InvalidInput(f"{where}: has neither \"data\" nor binary data "
                               "(parameters.binary_data_size)")
        return Tensor(name, datatype, decode_json(raw["data"], datatype, shape, name)), offset
    if type(size) is not int or size < 0:
        raise InvalidInput(f"{where}: binary_data_size must be a byte count, got {size!r}")
    if offset + size > len(binary):
        raise InvalidInput(
            f"{where}: binary_data_size is {size} bytes but only {len(binary) - offset} "
            f"are left in the body" + ("" if len(binary) else
                                       f" (is the {HEADER_LENGTH} header missing?)"))
    data = decode_binary(binary[offset:offset + size], datatype, shape, name)
    return Tensor(name, datatype, data), offset + size


def _read_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("\"outputs\" must be a list of {\"name\": ...}")
    outputs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{i}] needs a \"name\"")
        params = _parameters(item.get("parameters"), f"output {item['name']!r}")
        if "classification" in params:
            raise InvalidInput(f"output {item['name']!r}: the classification extension is "
                               "not supported")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"output {item['name']!r}: binary_data must be true or false")
        outputs.append(RequestedOutput(item["name"], binary))
    return outputs


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: \"parameters\" must be an object")
    return raw


# --- tensors --------------------------------------------------------------------------


def decode_json(data: Any, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    """JSON tensor data (flat row-major, or nested) as an array of `shape`."""
    where = f"input {name!r}"
    try:
        arr = np.asarray(data)
    except (ValueError, OverflowError):
        arr = np.asarray(None)  # ragged or odd: coerce below says what is wrong
    kind = arr.dtype.kind
    fast = datatype != "BYTES" and kind in "biuf" and not (
        kind != "b" and _may_hide_bool(arr, data))
    if not fast:  # strings, nulls, mixed values: the careful path, naming the bad value
        try:
            arr = np.asarray(data, dtype=object)
        except ValueError:
            arr = np.asarray(None)
    if arr.ndim and arr.size == math.prod(shape):
        data = arr = arr.reshape(shape)  # so that errors count rows of the declared shape
    arr = coerce(arr if fast else data, datatype, where, allow_nan=True)
    return _reshaped(arr, shape, where)


def _may_hide_bool(arr: np.ndarray, data: Any) -> bool:
    """True if `data` holds JSON booleans that numpy quietly read as 0 and 1."""
    if not ((arr == 0) | (arr == 1)).any():
        return False
    flat = data if isinstance(data, list) and arr.ndim == 1 else \
        np.asarray(data, dtype=object).reshape(-1).tolist()
    return bool in set(map(type, flat))


def decode_binary(buf: memoryview | bytes, datatype: str, shape: Sequence[int],
                  name: str) -> np.ndarray:
    """Binary tensor data as an array of `shape`: `np.frombuffer`, no per-element work."""
    where = f"input {name!r}"
    count = math.prod(shape)
    if datatype == "BYTES":
        return _reshaped(decode_bytes(buf, where), shape, where)
    dtype = to_numpy(datatype).newbyteorder("<")
    if len(buf) != count * dtype.itemsize:
        raise InvalidInput(f"{where}: {len(buf)} bytes of binary data do not hold shape "
                           f"{list(shape)} of {datatype} ({count * dtype.itemsize} bytes)")
    if datatype == "BOOL":
        raw = np.frombuffer(buf, dtype=np.uint8)
        if (raw > 1).any():
            raise InvalidInput(f"{where}: BOOL bytes must be 0 or 1")
        return raw.view(np.bool_).reshape(shape).copy()
    # one memcpy: a view on the body would be read-only, and models (python flavor)
    # may write to their input; merged batches are writable, so single ones are too
    return np.frombuffer(buf, dtype=dtype).reshape(shape).copy()


def decode_bytes(buf: memoryview | bytes, where: str = "BYTES tensor") -> np.ndarray:
    """Length-prefixed elements as a 1-D object array: all `str` when every element is
    UTF-8 text (what models trained on string columns expect), else all `bytes`."""
    view = memoryview(buf)
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"{where}: BYTES data ends inside a length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(f"{where}: a BYTES element of {length} bytes runs past the "
                               "end of its data")
        items.append(bytes(view[offset:offset + length]))
        offset += length
    out = np.empty(len(items), dtype=object)
    try:
        out[:] = [b.decode() for b in items]
    except UnicodeDecodeError:
        out[:] = items
    return out


def encode_bytes(arr: np.ndarray) -> bytes:
    """A BYTES tensor as length-prefixed elements (text as UTF-8).

    The binary form has no null (Triton's layout: a 4-byte length, then the bytes): a
    missing value (None, or the NaN pandas puts in text columns) is an element of
    length 0, as an empty string is; the JSON form says null."""
    parts: list[bytes] = []
    if arr.dtype.kind in "Mm":
        arr = arr.astype(str)
    for value in arr.reshape(-1).tolist():
        raw = value if isinstance(value, bytes) else b"" if _missing(value) else \
            str(value).encode()
        parts += (_LENGTH.pack(len(raw)), raw)
    return b"".join(parts)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _reshaped(arr: np.ndarray, shape: Sequence[int], where: str) -> np.ndarray:
    count = math.prod(shape)
    if arr.size != count:
        raise InvalidInput(f"{where}: shape {list(shape)} holds {count} values, "
                           f"data has {arr.size}")
    return arr.reshape(shape)


# --- writing a response ---------------------------------------------------------------


def check_outputs(requested: Sequence[RequestedOutput] | None, available: Sequence[str]) -> None:
    """400 for a requested output the model does not return."""
    for out in requested or ():
        if out.name not in available:
            raise InvalidInput(f"unknown output {out.name!r}; this model returns "
                               f"{list(available)}")


def encode_response(outputs: Mapping[str, np.ndarray], *, model_name: str, model_version: str,
                    request: InferRequest) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON part when binary data follows."""
    wanted = request.outputs or [RequestedOutput(k) for k in outputs]
    check_outputs(wanted, list(outputs))
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in wanted:
        binary = request.binary_output if out.binary is None else out.binary
        entry, blob = encode_output(out.name, outputs[out.name], binary=binary)
        entries.append(entry)
        if blob is not None:
            blobs.append(blob)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        answer["id"] = request.id
    answer["outputs"] = entries
    head = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, None
    return b"".join((head, *blobs)), len(head)


def encode_output(name: str, arr: np.ndarray, *, binary: bool) -> tuple[dict[str, Any],
                                                                         bytes | None]:
    """One response tensor: its JSON entry, and its binary data when `binary`."""
    arr = _typed(arr)
    datatype = from_numpy(arr.dtype)
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
    if datatype == "BYTES":
        if binary:
            blob = encode_bytes(arr)
            entry["parameters"] = {"binary_data_size": len(blob)}
            return entry, blob
        entry["data"] = _texts(arr)
        return entry, None
    flat = np.ascontiguousarray(arr).reshape(-1)
    if binary:
        blob = flat.astype(flat.dtype.newbyteorder("<"), copy=False).tobytes()
        entry["parameters"] = {"binary_data_size": len(blob)}
        return entry, blob
    # orjson writes native numeric arrays directly (NaN/inf as null)
    entry["data"] = flat if flat.dtype.isnative else flat.astype(flat.dtype.newbyteorder("="))
    return entry, None


def _typed(arr: np.ndarray) -> np.ndarray:
    """Object arrays that hold plain numbers go out as numbers, not BYTES."""
    if arr.dtype.kind != "O" or arr.size == 0:
        return arr
    values = arr.tolist()
    if any(isinstance(v, str | bytes) for v in arr.flat):
        return arr
    try:
        retyped = np.asarray(values)
    except (ValueError, OverflowError):
        return arr
    return retyped if retyped.dtype.kind in "biuf" and retyped.shape == arr.shape else arr


def _texts(arr: np.ndarray) -> list[Any]:
    """A BYTES tensor's elements as JSON strings (bytes decoded, dates in ISO 8601)."""
    if arr.dtype.kind in "UMm":
        return list(arr.astype(str).reshape(-1).tolist())
    return [v if isinstance(v, str) else None if _missing(v) else
            v.decode("utf-8", errors="backslashreplace") if isinstance(v, bytes) else str(v)
            for v in arr.reshape(-1).tolist()]


__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "RequestedOutput",
    "Tensor",
    "check_outputs",
    "decode_binary",
    "decode_bytes",
    "decode_json",
    "decompress",
    "encode_bytes",
    "encode_output",
    "encode_response",
    "header_length",
    "parse_request",
]
