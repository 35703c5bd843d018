"""A ready-to-run request for a served model: `serve` prints it, `/` and `/docs` show it.

The body is the first sample row stored at registration, so its columns and values are
the model's own; a signature without sample rows gets zeros (and empty strings) of the
declared types and shapes.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import orjson

from modelport.signature import FieldSpec, Signature


def base_url(host: str, port: int) -> str:
    """The URL to reach a server listening on `host`: one on every address (`0.0.0.0`,
    `::`) is reached on loopback, an IPv6 address goes in brackets."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        bracketed = ipaddress.ip_address(host).version == 6
    except ValueError:  # a name
        bracketed = False
    return f"http://[{host}]:{port}" if bracketed else f"http://{host}:{port}"


def example_body(sig: Signature, rows: int = 1) -> dict[str, Any]:
    """`{"records": [...]}` with `rows` records the model accepts."""
    if sig.sample:
        return {"records": sig.sample[:rows]}
    return {"records": [{s.name: _zero(s) for s in sig.inputs}]}


def curl_command(base_url: str, name: str, sig: Signature) -> str:
    """A shell command that asks `name` for a prediction, quoted for a POSIX shell."""
    body = orjson.dumps(example_body(sig), option=orjson.OPT_SERIALIZE_NUMPY).decode()
    quoted = "'" + body.replace("'", "'\\''") + "'"
    return (f"curl -X POST {base_url}/models/{name}/predict "
            f"-H 'content-type: application/json' -d {quoted}")


def _zero(spec: FieldSpec) -> Any:
    value: Any = "" if spec.datatype == "BYTES" else False if spec.datatype == "BOOL" else 0
    for dim in reversed(spec.shape):
        value = [value] * max(dim, 1)
    return value
