"""The Open Inference Protocol v2 wire format, without HTTP."""

from __future__ import annotations

import gzip
import re
import zlib

import numpy as np
import orjson
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from modelport.errors import InvalidInput, ModelportError, PayloadTooLarge
from modelport.server import v2_codec as codec


def request(inputs: list[dict[str, object]], *blobs: bytes, **extra: object) -> tuple[bytes,
                                                                                       int]:
    head = orjson.dumps({"inputs": inputs, **extra})
    return head + b"".join(blobs), len(head)


# --- JSON tensors ---------------------------------------------------------------------


def test_json_data_flat_or_nested_takes_the_declared_shape() -> None:
    flat = codec.decode_json([1.5, 2, 3, 4, 5, 6], "FP64", [2, 3], "x")
    nested = codec.decode_json([[1.5, 2, 3], [4, 5, 6]], "FP64", [2, 3], "x")
    assert flat.dtype == np.float64
    assert flat.shape == (2, 3)
    np.testing.assert_array_equal(flat, nested)
    assert codec.decode_json([1, 2], "FP32", [2], "x").dtype == np.float32
    assert codec.decode_json([True, False], "BOOL", [2], "x").tolist() == [True, False]
    assert codec.decode_json(["a", "é"], "BYTES", [2, 1], "x").tolist() == [["a"], ["é"]]


@pytest.mark.parametrize(("data", "datatype", "message"), [
    ([1.0, 2.0, 3.0], "FP64", "input 'x': shape [2, 2] holds 4 values, data has 3"),
    ([1.0, "2", 3.0, 4.0], "FP64", "input 'x': expected FP64, got string '2' at row 0"),
    ([1.0, True, 3.0, 4.0], "FP64", "input 'x': expected FP64, got boolean true at row 0"),
    ([1, 2, 3, 4.5], "INT64", "input 'x': expected INT64, got float 4.5 at row 1"),
    ([1, 2, 3, 300], "INT8", "input 'x': 300 at row 1 is out of range for INT8"),
    ([1, 2, 3, 4], "BYTES", "input 'x': expected BYTES (string), got int 1 at row 0"),
    ([[1, 2], [3]], "FP64", "input 'x': rows have different lengths"),
])
def test_json_data_that_does_not_fit_names_the_input(data: object, datatype: str,
                                                     message: str) -> None:
    with pytest.raises(InvalidInput, match="^" + re.escape(message)):
        codec.decode_json(data, datatype, [2, 2], "x")


def test_json_null_is_a_missing_float_left_for_the_signature_to_judge() -> None:
    arr = codec.decode_json([1.0, None], "FP64", [2], "x")
    assert np.isnan(arr[1])


def test_zeros_and_ones_are_numbers_unless_sent_as_booleans() -> None:
    assert codec.decode_json([0, 1, 0.0, 1.0], "FP64", [4], "x").tolist() == [0, 1, 0, 1]
    with pytest.raises(InvalidInput, match="boolean"):
        codec.decode_json([[0.5, 1.0], [False, 2.0]], "FP64", [2, 2], "x")


# --- binary tensors -------------------------------------------------------------------


def test_binary_numeric_tensors_are_read_little_endian_into_writable_arrays() -> None:
    x = np.arange(6, dtype="<f4").reshape(2, 3)
    arr = codec.decode_binary(memoryview(x.tobytes()), "FP32", [2, 3], "x")
    np.testing.assert_array_equal(arr, x)
    assert arr.flags.writeable  # models may write to their input
    big = np.array([1, 2], dtype="<i8").tobytes()
    assert codec.decode_binary(big, "INT64", [2], "x").tolist() == [1, 2]
    assert codec.decode_binary(b"\x01\x00", "BOOL", [2], "x").tolist() == [True, False]


def test_binary_tensor_of_the_wrong_size_or_value_names_the_input() -> None:
    with pytest.raises(InvalidInput, match=r"input 'x': 8 bytes of binary data do not hold "
                                           r"shape \[3\] of FP32 \(12 bytes\)"):
        codec.decode_binary(b"\0" * 8, "FP32", [3], "x")
    with pytest.raises(InvalidInput, match="BOOL bytes must be 0 or 1"):
        codec.decode_binary(b"\x02", "BOOL", [1], "x")


def test_bytes_elements_match_tritonclient_both_ways() -> None:
    values = np.array(["red", "", "grün"], dtype=object)
    raw = serialize_byte_tensor(values).item()
    decoded = codec.decode_bytes(raw)
    assert decoded.tolist() == ["red", "", "grün"]  # UTF-8 text comes back as str
    back = deserialize_bytes_tensor(codec.encode_bytes(decoded))
    assert back.tolist() == [b"red", b"", "grün".encode()]
    binary = np.array([b"\xff\x00", b"ok"], dtype=object)
    assert codec.decode_bytes(codec.encode_bytes(binary)).tolist() == [b"\xff\x00", b"ok"]


@pytest.mark.parametrize(("raw", "message"), [
    (b"\x05\x00", "ends inside a length prefix"),
    (b"\x05\x00\x00\x00abc", "a BYTES element of 5 bytes runs past the end"),
])
def test_malformed_bytes_data_is_a_400(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        codec.decode_bytes(raw)


def test_bytes_element_count_must_match_the_shape() -> None:
    raw = codec.encode_bytes(np.array(["a", "b"], dtype=object))
    with pytest.raises(InvalidInput, match=r"shape \[3\] holds 3 values, data has 2"):
        codec.decode_binary(raw, "BYTES", [3], "c")


# --- requests -------------------------------------------------------------------------


def test_request_with_json_and_binary_inputs_in_order() -> None:
    a = np.array([[1.0, 2.0]], dtype=np.float32)
    b = codec.encode_bytes(np.array(["x"], dtype=object))
    body, length = request(
        [{"name": "a", "shape": [1, 2], "datatype": "FP32",
          "parameters": {"binary_data_size": 8}},
         {"name": "j", "shape": [1], "datatype": "INT32", "data": [7]},
         {"name": "b", "shape": [1], "datatype": "BYTES",
          "parameters": {"binary_data_size": len(b)}}],
        a.tobytes(), b, id="r1", parameters={"binary_data_output": True},
        outputs=[{"name": "p", "parameters": {"binary_data": False}}, {"name": "q"}])
    req = codec.parse_request(body, length)
    assert [t.name for t in req.inputs] == ["a", "j", "b"]
    np.testing.assert_array_equal(req.inputs[0].data, a)
    assert req.inputs[1].data.tolist() == [7]
    assert req.inputs[2].data.tolist() == ["x"]
    assert req.id == "r1"
    assert req.binary_output
    assert req.outputs == [codec.RequestedOutput("p", False), codec.RequestedOutput("q")]


@pytest.mark.parametrize(("body", "message"), [
    (b"", "request body is empty"),
    (b"[1]", "must be a JSON object"),
    (b"{", "not valid JSON"),
    (b'{"inputs": []}', "non-empty list"),
    (b'{"inputs": [{"shape": [1]}]}', r"inputs\[0\] needs a \"name\""),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}',
     "input 'x': unknown datatype 'FP8'"),
    (b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}',
     r"input 'x': \"shape\" must be a list of sizes"),
    (b'{"inputs": [{"name": "x", "shape": [true], "datatype": "FP32", "data": [1]}]}',
     r"input 'x': \"shape\" must be a list of sizes"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}',
     "input 'x': has neither \"data\" nor binary data"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},'
     b' {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
     "input 'x' is sent twice"),
    (b'{"id": 5, "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
     "\"id\" must be a string"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1],'
     b' "parameters": {"shared_memory_region": "r"}}]}', "shared memory is not supported"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",'
     b' "parameters": {"binary_data_size": 4}}]}',
     "only 0 are left in the body .is the Inference-Header-Content-Length header missing"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],'
     b' "outputs": [{"name": "p", "parameters": {"binary_data": 1}}]}',
     "binary_data must be true or false"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],'
     b' "outputs": [{"name": "p", "parameters": {"classification": 2}}]}',
     "classification extension is not supported"),
])
def test_malformed_requests_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        codec.parse_request(body)


def test_binary_data_must_be_used_exactly() -> None:
    spec = [{"name": "x", "shape": [1], "datatype": "FP32",
             "parameters": {"binary_data_size": 4}}]
    body, length = request(spec, b"\0" * 6)
    with pytest.raises(InvalidInput, match="2 bytes of binary data follow the last input"):
        codec.parse_request(body, length)


def test_header_length_must_lie_within_the_body() -> None:
    assert codec.header_length(None, 10) is None
    assert codec.header_length(" 7 ", 10) == 7
    for bad in ("11", "-1", "x", "٣"):
        with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
            codec.header_length(bad, 10)


def test_compressed_bodies_are_inflated_within_the_limit() -> None:
    body = b'{"inputs": []}' * 10
    assert codec.decompress(body, None, 100) == body
    assert codec.decompress(gzip.compress(body), "gzip", 1000) == body
    assert codec.decompress(zlib.compress(body), "deflate", 1000) == body
    with pytest.raises(PayloadTooLarge):
        codec.decompress(gzip.compress(b"\0" * 10_000_000), "gzip", 1000)
    with pytest.raises(InvalidInput, match="not valid gzip"):
        codec.decompress(b"plain", "gzip", 1000)
    with pytest.raises(InvalidInput, match="truncated"):
        codec.decompress(gzip.compress(body)[:-10], "gzip", 1000)
    with pytest.raises(ModelportError, match="br") as info:
        codec.decompress(body, "br", 1000)
    assert info.value.status_code == 415


# --- responses ------------------------------------------------------------------------


def one_input() -> codec.InferRequest:
    return codec.parse_request(orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}))


def test_json_response_holds_flat_data_and_null_for_nan() -> None:
    req = one_input()
    body, length = codec.encode_response(
        {"p": np.array([[0.5, np.nan]]), "label": np.array(["yes"], dtype=object)},
        model_name="m", model_version="3", request=req)
    assert length is None
    assert orjson.loads(body) == {"model_name": "m", "model_version": "3", "outputs": [
        {"name": "p", "datatype": "FP64", "shape": [1, 2], "data": [0.5, None]},
        {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["yes"]}]}


def test_a_missing_text_value_is_null_in_json_and_empty_in_binary() -> None:
    """None, and the NaN pandas puts in text columns, are one missing value: null in
    JSON, as the JSON API answers it; in the binary form, which has no null, an element
    of length 0."""
    labels = np.array(["yes", None, np.nan], dtype=object)
    entry, blob = codec.encode_output("label", labels, binary=False)
    assert entry["data"] == ["yes", None, None] and blob is None
    _, blob = codec.encode_output("label", labels, binary=True)
    assert blob is not None
    assert deserialize_bytes_tensor(blob).tolist() == [b"yes", b"", b""]


def test_binary_response_follows_its_json_in_output_order() -> None:
    req = one_input()
    req.id = "abc"
    req.parameters["binary_data_output"] = True
    req.outputs = [codec.RequestedOutput("label"), codec.RequestedOutput("p", binary=False),
                   codec.RequestedOutput("n")]
    outputs = {"p": np.array([1.0], dtype=np.float16), "n": np.array([[1, 2]], dtype=">i4"),
               "label": np.array(["é"], dtype=object)}
    body, length = codec.encode_response(outputs, model_name="m", model_version="1",
                                         request=req)
    assert length is not None
    head = orjson.loads(body[:length])
    assert head["id"] == "abc"
    label, p, n = head["outputs"]
    assert label == {"name": "label", "datatype": "BYTES", "shape": [1],
                     "parameters": {"binary_data_size": 6}}
    assert p == {"name": "p", "datatype": "FP16", "shape": [1], "data": [1.0]}
    assert n["parameters"] == {"binary_data_size": 8}
    blob = body[length:]
    assert codec.decode_bytes(blob[:6]).tolist() == ["é"]
    assert np.frombuffer(blob[6:], dtype="<i4").tolist() == [1, 2]


def test_object_outputs_holding_numbers_go_out_as_numbers() -> None:
    entry, _ = codec.encode_output("p", np.array([1, 2], dtype=object), binary=False)
    assert (entry["datatype"], list(entry["data"])) == ("INT64", [1, 2])
    entry, _blob = codec.encode_output("d", np.array(["2024-01-02"], dtype="datetime64[D]"),
                                      binary=False)
    assert (entry["datatype"], entry["data"]) == ("BYTES", ["2024-01-02"])


def test_unknown_requested_output_is_a_400() -> None:
    req = one_input()
    req.outputs = [codec.RequestedOutput("nope")]
    with pytest.raises(InvalidInput, match=r"unknown output 'nope'; this model returns \['p'\]"):
        codec.encode_response({"p": np.array([1.0])}, model_name="m", model_version="1",
                              request=req)
