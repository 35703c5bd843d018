"""Avro messages: the worker reads them through a schema registry (or one configured
schema), scores them like JSON ones, writes Avro results, dead-letters what cannot be
read with the reason, and holds the batch through a registry outage.

The registry is the small Confluent-compatible one of `schema_registry.py`, served
over HTTP by the test (no real registry runs here). The same flow on Redis Streams and
Kafka is in `test_broker_contract.py`.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import fastavro
import orjson
import pytest
from pydantic import ValidationError
from schema_registry import SchemaRegistryServer, framed, unframed
from stream_helpers import cancer_dataplane, patients

from modelport import Settings
from modelport.config import AvroConfig, StreamConfig
from modelport.dataplane import DataPlane
from modelport.errors import ConfigError, InvalidInput, NotReady
from modelport.monitoring.metrics import Metrics
from modelport.pipeline import MemoryWriter, Pipeline
from modelport.streams.avro import AvroFormat, SchemaRegistry
from modelport.streams.base import Message
from modelport.streams.config import make_codec
from modelport.streams.memory import MemoryBroker, MemoryBus
from modelport.streams.worker import StreamWorker
from modelport.streams.writer import StreamWriter
from waiting import until


def patient_schema(names: list[str], kind: str = "double",
                   name: str = "Patient") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "clinic",
            "fields": [{"name": n, "type": kind} for n in names]}


def envelope_schema(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": "Envelope", "namespace": "clinic",
            "fields": [{"name": "id", "type": "string"},
                       {"name": "key", "type": ["null", "long"], "default": None},
                       {"name": "data", "type": data}]}


@pytest.fixture
def registry() -> Iterator[SchemaRegistryServer]:
    server = SchemaRegistryServer().up()
    yield server
    server.down()


@pytest.fixture
async def dataplane(settings: Settings) -> AsyncIterator[DataPlane]:
    async with cancer_dataplane(settings) as dp:
        yield dp


def avro(registry: SchemaRegistryServer) -> AvroFormat:
    return AvroFormat(registry=SchemaRegistry(registry.url, timeout=2))


async def test_avro_records_score_as_json_ones_and_results_are_avro(
        dataplane: DataPlane, registry: SchemaRegistryServer) -> None:
    records = patients(40)
    schema = patient_schema(list(records[0]))
    ident = registry.add(schema)
    wrapped = registry.add(envelope_schema(schema), "patients-envelope-value")
    bus = MemoryBus()
    for r in records[:30]:  # bare records: keyed by the broker's id
        bus.append("patients", framed(ident, schema, r))
        bus.append("json", orjson.dumps(r))
    for i, r in enumerate(records[30:], 30):  # envelopes: their own id and key
        bus.append("patients", framed(wrapped, envelope_schema(schema),
                                      {"id": f"p{i}", "key": i, "data": r}))
        bus.append("json", orjson.dumps({"id": f"p{i}", "key": i, "data": r}))
    results: dict[str, MemoryWriter] = {}
    for stream, codec in (("json", "json"), ("patients", avro(registry))):
        writer = results[stream] = MemoryWriter()
        worker = StreamWorker(Pipeline("score", "cancer", dataplane, writer=writer),
                              MemoryBroker(bus, stream), dead_letter_subject="dlq",
                              batch_size=16, fetch_timeout=0.05, codec=codec)
        stats = await worker.run(burst=True)
        assert (stats.processed, stats.dead_lettered) == (40, 0)
    by_json, by_avro = results["json"].rows, results["patients"].rows
    assert by_avro["p35"]["key"] == 35
    # the memory broker numbers each stream's entries alike: the same ids both ways
    assert by_avro.keys() == by_json.keys()
    assert all(by_avro[k]["predictions"] == by_json[k]["predictions"] for k in by_json)

    # Avro results: the schema made from them, registered under <subject>-value
    out = MemoryBus()
    writer = StreamWriter("scores", MemoryBroker(out, "scores"), codec="avro",
                          avro={"registry_url": registry.url})
    worker = StreamWorker(Pipeline("score", "cancer", dataplane, writer=writer),
                          MemoryBroker(bus, "patients"), dead_letter_subject="dlq",
                          codec=avro(registry), fetch_timeout=0.05)
    bus.append("patients", framed(wrapped, envelope_schema(schema),
                                  {"id": "p99", "key": 5, "data": records[0]}))
    await worker.run(burst=True)
    [payload] = out.messages("scores")
    [result_id] = registry.subjects["scores-value"]
    got_id, result = unframed(payload, registry.schemas)
    assert got_id == result_id
    assert result["id"] == "p99" and result["key"] == 5
    assert result["predictions"] == by_json["1"]["predictions"]  # records[0], as JSON
    assert len(result["probabilities"]) == 2
    assert json.loads(registry.schemas[result_id])["name"] == "Result"


async def test_clean_batches_take_the_typed_path_and_others_read_the_same(
        dataplane: DataPlane, registry: SchemaRegistryServer) -> None:
    records = patients(10)
    names = list(records[0])
    schema = patient_schema(names)
    # another field order, and floats: still a record of exactly the inputs
    reordered = patient_schema(names[::-1], "float", "Reordered")
    first, second = registry.add(schema), registry.add(reordered)
    messages = [Message(f"m{i}", framed(first if i % 2 else second,
                                        schema if i % 2 else reordered, r))
                for i, r in enumerate(records)]
    fmt = avro(registry)
    await fmt.resolve(messages)
    signature = dataplane.deployment("cancer").model.signature
    typed = fmt.typed(signature)
    assert typed is not None
    whole = typed.decode_all(messages)
    assert whole is not None
    ids, keys, table = whole
    assert ids == [m.id for m in messages] and keys is None and table.shape == (10, 30)
    assert table[1].tolist() == [records[1][n] for n in typed.names]
    # a record with a long: read by fastavro on the same path
    longs = {**patient_schema(names, name="Longs")}
    longs["fields"] = [{"name": n, "type": "long" if n == names[0] else "double"}
                       for n in names]
    rounded = {**records[0], names[0]: 18}
    whole_number = Message("long", framed(registry.add(longs), longs, rounded))
    await fmt.resolve([whole_number])
    decoded = typed.decode(whole_number)
    assert decoded is not None and decoded[2][typed.names.index(names[0])] == 18
    # a cut-off body of the fixed-width schema: the general way, which names it
    assert typed.decode(Message("cut", messages[1].payload[:-1])) is None
    # an envelope, or a record with a field the model does not take: the general way
    extra = patient_schema([*names, "ward"], name="WithWard")
    odd = Message("odd", framed(registry.add(extra), extra, {**records[0], "ward": 3.0}))
    await fmt.resolve([odd])
    assert typed.decode(odd) is None and typed.decode_all([*messages, odd]) is None
    assert fmt.read(odd.payload)["ward"] == 3.0


async def test_poison_is_dead_lettered_with_a_reason_naming_it(
        dataplane: DataPlane, registry: SchemaRegistryServer) -> None:
    records = patients(20)
    names = list(records[0])
    schema = patient_schema(names)
    ident = registry.add(schema)
    as_text = {"type": "record", "name": "Text", "fields": [
        {"name": n, "type": "string" if n == "mean radius" else "double"} for n in names]}
    missing = patient_schema(names[1:], name="Missing")
    good = framed(ident, schema, records[0])
    poison = {
        "unknown schema id 4242": framed(4242, schema, records[1]),
        "Avro body is truncated": good[:40],
        "column 'mean radius': expected FP64, got string 'big'": framed(
            registry.add(as_text), as_text, {**records[2], "mean radius": "big"}),
        "missing": framed(registry.add(missing), missing, records[3]),
        "not in the Confluent wire format: its first byte is 0x7b": orjson.dumps(records[4]),
        "bytes are left after its record": good + b"\x00\x01",
    }
    bus = MemoryBus()
    for r in records[5:]:
        bus.append("patients", framed(ident, schema, r))
    for payload in poison.values():
        bus.append("patients", payload)
    writer = MemoryWriter()
    worker = StreamWorker(Pipeline("score", "cancer", dataplane, writer=writer),
                          MemoryBroker(bus, "patients"), dead_letter_subject="dlq",
                          batch_size=8, fetch_timeout=0.05, codec=avro(registry))
    stats = await worker.run(burst=True)
    assert (stats.processed, stats.dead_lettered) == (15, len(poison)) and len(writer.rows) == 15
    dead = [orjson.loads(m) for m in bus.messages("dlq")]
    for words, payload in poison.items():
        [letter] = [d for d in dead if words in d["reason"]]
        assert letter.get("payload", "").encode() == payload or \
            letter.get("payload_base64") is not None  # binary: kept byte for byte
    assert await MemoryBroker(bus, "patients").lag() == 0


async def test_a_registry_outage_holds_the_batch_and_dead_letters_nothing(
        dataplane: DataPlane, registry: SchemaRegistryServer) -> None:
    records = patients(12)
    schema = patient_schema(list(records[0]))
    ident = registry.add(schema)
    registry.down()
    bus = MemoryBus()
    for r in records:
        bus.append("patients", framed(ident, schema, r))
    writer, metrics = MemoryWriter(), Metrics()
    broker = MemoryBroker(bus, "patients")
    worker = StreamWorker(Pipeline("score", "cancer", dataplane, writer=writer), broker,
                          dead_letter_subject="dlq", fetch_timeout=0.05, codec=avro(registry),
                          metrics=metrics, max_backoff=0.2)
    task = asyncio.create_task(worker.run())
    retries = metrics.stream_retries.labels("score", "schema registry")
    await until(lambda: retries._value.get() >= 3, what="retries through the outage")
    assert writer.rows == {} and bus.messages("dlq") == [] and await broker.lag() == 12
    registry.up()  # the same port, the same schemas
    await until(lambda: len(writer.rows) == 12, what="the batch written after the outage")
    worker.stop()
    stats = await asyncio.wait_for(task, 30)
    assert stats.dead_lettered == 0 and bus.messages("dlq") == [] and await broker.lag() == 0


async def test_one_configured_schema_reads_bare_bodies(dataplane: DataPlane) -> None:
    records = patients(5)
    schema = patient_schema(list(records[0]))
    parsed = fastavro.parse_schema(schema)
    bus = MemoryBus()
    for r in records:
        body = io.BytesIO()
        fastavro.schemaless_writer(body, parsed, r)
        bus.append("patients", body.getvalue())
    bus.append("patients", body.getvalue()[:-3])
    spec = StreamConfig.model_validate({
        "broker": {"type": "redis"}, "dead_letter": "dlq", "codec": "avro",
        "avro": {"schema": json.dumps(schema)}})
    writer = MemoryWriter()
    worker = StreamWorker(Pipeline("score", "cancer", dataplane, writer=writer),
                          MemoryBroker(bus, "patients"), dead_letter_subject="dlq",
                          fetch_timeout=0.05, codec=make_codec(spec, "stream"))
    stats = await worker.run(burst=True)
    assert (stats.processed, stats.dead_lettered) == (5, 1)
    [letter] = [orjson.loads(m) for m in bus.messages("dlq")]
    assert "Avro body is truncated" in letter["reason"] and "configured schema" in \
        letter["reason"]


def test_avro_configuration_is_checked_at_start() -> None:
    base = {"broker": {"type": "kafka"}, "dead_letter": "dlq"}
    with pytest.raises(ValidationError, match="codec avro needs avro"):
        StreamConfig.model_validate({**base, "codec": "avro"})
    with pytest.raises(ValidationError, match="is for codec: avro, not json"):
        StreamConfig.model_validate({**base, "avro": {"registry_url": "http://r"}})
    with pytest.raises(ValidationError, match="not both"):
        AvroConfig.model_validate({"schema": "{}", "registry_url": "http://r"})
    with pytest.raises(ValidationError, match="registy_url\n  Extra inputs are not permitted"):
        AvroConfig.model_validate({"registy_url": "http://r"})
    spec = StreamConfig.model_validate({**base, "codec": "avro",
                                        "avro": {"schema": {"type": "recrd"}}})
    with pytest.raises(ConfigError, match=r"^stream: avro.schema: not an Avro schema"):
        make_codec(spec, "stream")
    with pytest.raises(ConfigError, match="avro options are for codec: avro"):
        StreamWriter("scores", codec="json", avro={"registry_url": "http://r"})


async def test_registry_errors_outage_or_configuration(
        registry: SchemaRegistryServer) -> None:
    client = SchemaRegistry(registry.url, timeout=2)
    assert await client.fetch([7]) == {7: f"unknown schema id 7 (schema registry "
                                          f"{registry.url} does not have it)"}
    with pytest.raises(ConfigError, match=r"POST /subjects/x/y/versions answered 404"):
        await client.register("x/y", {"type": "string"})
    registry.down()
    with pytest.raises(NotReady, match=f"schema registry {registry.url} is unavailable"):
        await client.fetch([1])
    with pytest.raises(InvalidInput, match="unknown schema id 1"):
        AvroFormat(registry=client).read(framed(1, {"type": "string"}, "x"))


async def test_results_of_a_given_schema_without_a_registry_are_bare_bodies() -> None:
    from modelport.pipeline import Frame

    schema = {"type": "record", "name": "Score", "fields": [
        {"name": "id", "type": "string"}, {"name": "predictions", "type": "int"}]}
    out = MemoryBus()
    writer = StreamWriter("scores", MemoryBroker(out, "scores"), codec="avro",
                          avro={"output_schema": json.dumps(schema)})
    await writer.write(Frame(["a", 7], {"predictions": [1, 0]}))
    parsed = fastavro.parse_schema(schema)
    assert [fastavro.schemaless_reader(io.BytesIO(p), parsed, None)
            for p in out.messages("scores")] == [{"id": "a", "predictions": 1},
                                                 {"id": "7", "predictions": 0}]
    # a result the schema cannot hold is refused naming it (the worker dead-letters it)
    with pytest.raises(InvalidInput, match="result 'b' does not fit the output Avro schema"):
        await writer.write(Frame(["b"], {"predictions": ["high"]}))
