"""A small Confluent-compatible schema registry served over HTTP, for the Avro tests.

No real registry runs here (Confluent's and Karapace keep their schemas in Kafka), so
the tests serve the part of its REST API a stream worker uses, as Confluent documents
it: `GET /schemas/ids/{id}` (404 with error code 40403 for an unknown id) and `POST
/subjects/{subject}/versions` (the same schema twice keeps its id). `down()` closes
the socket — connections are refused, as when the registry is restarting — and `up()`
serves again on the same port with the same schemas.
"""

from __future__ import annotations

import io
import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fastavro

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class SchemaRegistryServer:
    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.requests = 0
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, schema: dict[str, Any], subject: str = "patients-value") -> int:
        """Register `schema` (as a producer would) and answer its id."""
        text = json.dumps(schema, sort_keys=True)
        ident = next((i for i, known in self.schemas.items() if known == text), None)
        if ident is None:
            ident = len(self.schemas) + 1
            self.schemas[ident] = text
        versions = self.subjects.setdefault(subject, [])
        if ident not in versions:
            versions.append(ident)
        return ident

    def up(self) -> SchemaRegistryServer:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                registry.requests += 1
                parts = self.path.strip("/").split("/")
                if parts[:2] == ["schemas", "ids"] and len(parts) == 3 \
                        and parts[2].isdigit() and int(parts[2]) in registry.schemas:
                    self.answer(200, {"schema": registry.schemas[int(parts[2])]})
                else:
                    self.answer(404, {"error_code": 40403, "message": "Schema not found"})

            def do_POST(self) -> None:
                registry.requests += 1
                parts = self.path.strip("/").split("/")
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
                    self.answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
                    return
                schema = json.loads(body["schema"])
                self.answer(200, {"id": registry.add(schema, parts[1])})

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def framed(schema_id: int, schema: dict[str, Any], record: Any) -> bytes:
    """A record in Confluent's wire format: magic byte, schema id, Avro body."""
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def unframed(payload: bytes, schemas: dict[int, str]) -> tuple[int, Any]:
    """A wire-format message's schema id and record."""
    magic, ident = struct.unpack_from(">bI", payload)
    assert magic == 0
    schema = fastavro.parse_schema(json.loads(schemas[ident]))
    return ident, fastavro.schemaless_reader(io.BytesIO(payload[5:]), schema, None)
