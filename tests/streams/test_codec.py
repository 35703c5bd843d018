"""Message decoding: the typed fast path agrees with the general one, message for message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest
from stream_helpers import cancer_dataplane, patients

from modelport import Settings
from modelport.dataplane import DataPlane
from modelport.pipeline import MemoryWriter, Pipeline
from modelport.signature import FieldSpec, Signature
from modelport.streams import codec
from modelport.streams.base import Message
from modelport.streams.codec import TypedDecoder
from modelport.streams.memory import MemoryBroker, MemoryBus
from modelport.streams.worker import StreamWorker


def columns(*specs: tuple[str, str], allow_nan: bool = False) -> Signature:
    return Signature(layout="columns", allow_nan=allow_nan,
                     inputs=[FieldSpec(name=n, datatype=d) for n, d in specs])


def test_applies_to_records_of_one_numeric_type_only() -> None:
    assert TypedDecoder.for_signature(columns(("a b", "FP64"), ("c", "FP64")), "json")
    assert TypedDecoder.for_signature(columns(("n", "INT32")), "msgpack")
    for refused in (
        columns(("a", "FP64"), ("b", "INT64")),  # two types: one array would blur them
        columns(("a", "BYTES")),
        columns(("a", "FP64"), allow_nan=True),  # null must become NaN: the general way
        columns(("data", "FP64")),  # an envelope's field name
        Signature(layout="tensor", inputs=[FieldSpec(name="x", datatype="FP32", shape=[4])]),
        None,
    ):
        assert TypedDecoder.for_signature(refused, "json") is None


def test_decodes_records_and_envelopes_and_refuses_the_rest() -> None:
    typed = TypedDecoder.for_signature(columns(("a b", "FP64"), ("c", "FP64")), "json")
    assert typed is not None

    def decode(payload: bytes) -> Any:
        return typed.decode(Message("7-0", payload))

    assert decode(b'{"a b": 1, "c": 2.5}') == ("7-0", None, (1.0, 2.5))
    assert decode(b'{"id": 9, "key": [1], "data": {"c": 2.5, "a b": 1}}') == \
        ("9", [1], (1.0, 2.5))  # fields in any order; values in input order
    for refused in (b'{"id": null, "data": {"a b": 1, "c": 2}}',  # the general path says why
                    b'{"a b": true, "c": 2}', b'{"a b": "1", "c": 2}', b'{"a b": 1}',
                    b'{"a b": 1, "c": 2, "d": 3}', b'{"id": "x", "data": {"a b": 1, "c": 2}, '
                    b'"extra": 1}', b"[1, 2]", b"{not json", b'{"a b": 1e999, "c": 2}'):
        assert decode(refused) is None, refused


def test_an_integer_too_large_for_the_array_leaves_the_fast_path() -> None:
    typed = TypedDecoder.for_signature(columns(("n", "INT64")), "json")
    assert typed is not None
    rows = [typed.decode(Message("1", p)) for p in (b'{"n": 5}', b'{"n": 99999999999999999999}')]
    values = [r[2] for r in rows if r is not None]
    assert typed.table(values[:1]).tolist() == [[5]]  # type: ignore[union-attr]
    assert typed.table(values) is None


@pytest.fixture
async def dataplane(settings: Settings) -> AsyncIterator[DataPlane]:
    async with cancer_dataplane(settings) as dp:
        yield dp


def mixed_payloads(encode: Any) -> list[bytes]:
    """Good messages of every shape, among poison ones, in one stream."""
    records = patients(40)
    good = [encode({"id": f"e{i}", "key": i % 3, "data": r}) for i, r in enumerate(records[:20])]
    good += [encode(r) for r in records[20:30]]  # bare records: keyed by the broker's id
    good += [encode({"id": i, "data": list(r.values())}) for i, r in enumerate(records[30:35])]
    ints = {k: int(v * 1000) for k, v in records[35].items()}  # integers for doubles
    good.append(encode({"id": "ints", "data": ints}))
    bad = [encode({"id": "str", "data": {**records[36], "mean radius": "x"}}),
           encode({"id": "bool", "data": {**records[37], "mean radius": True}}),
           encode({"id": "null", "data": {**records[38], "mean radius": None}}),
           encode({"id": "extra", "data": records[39], "more": 1}),
           encode({"id": None, "data": records[39]}), b"\xc1{not json"]
    out = good + bad
    return [out[i] for i in np.random.default_rng(3).permutation(len(out))]


async def run(dataplane: DataPlane, payloads: list[bytes], codec_name: Any
              ) -> tuple[dict[Any, dict[str, Any]], list[tuple[str, str]]]:
    bus = MemoryBus()
    for p in payloads:
        bus.append("in", p)
    writer = MemoryWriter()
    worker = StreamWorker(Pipeline("score", "cancer", dataplane, writer=writer),
                          MemoryBroker(bus, "in"), dead_letter_subject="dlq", batch_size=16,
                          fetch_timeout=0.05, codec=codec_name)
    await worker.run(burst=True)
    dead = sorted((d["id"], d["reason"]) for d in map(orjson.loads, bus.messages("dlq")))
    return writer.rows, dead


def assert_same_rows(fast: dict[Any, dict[str, Any]], slow: dict[Any, dict[str, Any]]
                     ) -> None:
    """The same rows by the two paths: keys, predictions, probabilities, message keys."""
    assert fast.keys() == slow.keys()
    for key, row in fast.items():
        assert row.keys() == slow[key].keys()
        assert row["predictions"] == slow[key]["predictions"]
        assert row["probabilities"] == pytest.approx(slow[key]["probabilities"])
        assert row.get("key") == slow[key].get("key")


@pytest.mark.parametrize("codec_name", ["json", "msgpack"])
async def test_the_fast_path_writes_and_rejects_exactly_what_the_general_one_does(
        dataplane, monkeypatch, codec_name) -> None:
    encode = orjson.dumps if codec_name == "json" else msgspec.msgpack.encode
    payloads = mixed_payloads(encode)
    decoded: list[bool] = []
    typed_decode = TypedDecoder.decode
    monkeypatch.setattr(TypedDecoder, "decode", lambda self, m: decoded.append(
        (out := typed_decode(self, m)) is not None) or out)
    fast_rows, fast_dead = await run(dataplane, payloads, codec_name)
    assert decoded.count(True) == 31  # the records of the inputs, bare or enveloped
    monkeypatch.setattr(codec.TypedDecoder, "for_signature", classmethod(lambda *a: None))
    slow_rows, slow_dead = await run(dataplane, payloads, codec_name)
    assert len(fast_rows) == 36 and len(fast_dead) == 6
    assert fast_dead == slow_dead
    assert_same_rows(fast_rows, slow_rows)
    assert fast_rows["e4"]["key"] == 1


def clean_payloads(encode: Any) -> list[bytes]:
    """Batches of one shape each: envelopes (string, integer and absent ids, keys on
    some), then bare records."""
    records = patients(48)
    out = [encode({"id": f"e{i}", "key": "k" if i % 2 else None, "data": r})
           for i, r in enumerate(records[:16])]
    out += [encode({"id": 1000 + i, "data": r}) for i, r in enumerate(records[16:24])]
    out += [encode({"data": r}) for r in records[24:32]]
    return out + [encode(r) for r in records[32:]]


@pytest.mark.parametrize("codec_name", ["json", "msgpack"])
async def test_a_batch_read_in_one_go_is_written_as_message_by_message(
        dataplane, monkeypatch, codec_name) -> None:
    encode = orjson.dumps if codec_name == "json" else msgspec.msgpack.encode
    payloads = clean_payloads(encode)
    whole: list[int] = []
    decode_all = TypedDecoder.decode_all

    def spy(self: TypedDecoder, messages: list[Message]) -> Any:
        out = decode_all(self, messages)
        if out is not None:
            whole.append(len(messages))
        return out

    monkeypatch.setattr(TypedDecoder, "decode_all", spy)
    fast_rows, fast_dead = await run(dataplane, payloads, codec_name)
    assert sum(whole) >= 32  # the envelopes, and the bare records once the shape is known
    monkeypatch.setattr(codec.TypedDecoder, "for_signature", classmethod(lambda *a: None))
    slow_rows, slow_dead = await run(dataplane, payloads, codec_name)

    assert fast_dead == slow_dead == []
    assert len(fast_rows) == len(payloads)
    assert {"e1", "e2", "1007"} <= fast_rows.keys()
    assert_same_rows(fast_rows, slow_rows)
    assert fast_rows["e1"]["key"] == "k"
