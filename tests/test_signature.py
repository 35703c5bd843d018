"""Signatures: inference from a sample, decoding what people send, and the errors."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from modelport import Signature
from modelport.errors import InvalidInput
from modelport.signature import FieldSpec, infer_signature, name_outputs


@pytest.fixture
def people() -> pd.DataFrame:
    return pd.DataFrame({
        "age": [30.0, 41.5, 52.0, 23.0, 35.0, 60.0],
        "city": ["Oslo", "Lima", "Pune", "Oslo", "Rome", "Lima"],
        "visits": [1, 4, 2, 8, 3, 5],
        "member": [True, False, True, True, False, False],
    })


@pytest.fixture
def sig(people: pd.DataFrame) -> Signature:
    return infer_signature(people)


def invalid(message: str) -> Any:
    """Expect an InvalidInput whose message holds `message` word for word."""
    return pytest.raises(InvalidInput, match=re.escape(message))


def record(**overrides: Any) -> dict[str, Any]:
    return {"age": 30.0, "city": "Oslo", "visits": 1, "member": True, **overrides}


# --- inference ------------------------------------------------------------------------


def test_infer_from_a_dataframe(sig: Signature) -> None:
    assert sig.layout == "columns"
    assert sig.model_input == "dataframe"
    assert sig.describe() == "age: FP64, city: BYTES, visits: INT64, member: BOOL"
    assert not sig.allow_nan
    assert len(sig.sample) == 5  # a few rows, not the whole frame
    assert sig.sample[0] == {"age": 30.0, "city": "Oslo", "visits": 1, "member": True}


def test_infer_keeps_float32_and_json_safe_samples() -> None:
    frame = pd.DataFrame({"x": np.array([1.5, np.nan], dtype=np.float32)})
    sig = infer_signature(frame, allow_nan=True)
    assert sig.inputs[0].datatype == "FP32"
    assert sig.allow_nan
    assert sig.sample == [{"x": 1.5}, {"x": None}]
    assert Signature.model_validate_json(sig.model_dump_json()) == sig


def test_infer_from_an_array() -> None:
    sig = infer_signature(np.zeros((8, 28, 28), dtype=np.float32))
    assert sig.layout == "tensor"
    assert sig.model_input == "ndarray"
    assert sig.inputs == [FieldSpec(name="input", datatype="FP32", shape=[28, 28])]
    assert len(sig.sample) == 5
    assert np.asarray(sig.sample[0]["input"]).shape == (28, 28)


def test_an_array_sample_needs_a_batch_dimension() -> None:
    with pytest.raises(InvalidInput, match="must have a batch dimension"):
        infer_signature(np.zeros(4))


def test_infer_from_records() -> None:
    sig = infer_signature([
        {"id": 1, "score": 0.5, "name": "a", "gap": 1},
        {"id": 2, "score": 1, "name": None, "gap": None},
    ])
    assert sig.layout == "columns"
    assert sig.model_input == "dataframe"
    # integers with a missing value are floats; strings with one stay strings
    assert sig.describe() == "id: INT64, score: FP64, name: BYTES, gap: FP64"
    assert sig.sample[1] == {"id": 2, "score": 1, "name": None, "gap": None}


def test_records_missing_a_field_are_named() -> None:
    sample = [{"a": 1, "b": 2}, {"a": 3}]
    sig = infer_signature(sample)
    assert [s.name for s in sig.inputs] == ["a", "b"]
    with pytest.raises(InvalidInput, match="row 1: missing field 'b'"):
        sig.decode(sample)


def test_infer_from_a_mapping_of_arrays() -> None:
    sig = infer_signature({
        "image": np.zeros((3, 2, 2), dtype=np.uint8),
        "lengths": np.array([1, 2, 3]),
    })
    assert sig.layout == "tensor"
    assert sig.describe() == "image: UINT8 [2, 2], lengths: INT64"
    assert sig.sample[0] == {"image": [[0, 0], [0, 0]], "lengths": 1}
    batch = sig.sample_batch()
    assert batch["image"].shape == (3, 2, 2)


def test_infer_outputs() -> None:
    outputs = {"label": np.array(["a", "b"]), "proba": np.zeros((2, 3), dtype=np.float32)}
    sig = infer_signature(np.zeros((2, 4)), outputs)
    assert [o.describe() for o in sig.outputs] == ["label: BYTES", "proba: FP32 [3]"]


def test_field_specs_are_checked_when_written() -> None:
    with pytest.raises(ValidationError, match="unknown datatype 'FLOAT'"):
        FieldSpec(name="x", datatype="FLOAT")
    with pytest.raises(ValidationError, match="-1 for any size"):
        FieldSpec(name="x", datatype="FP32", shape=[-2])


# --- decoding what people send --------------------------------------------------------


def test_decode_records(sig: Signature) -> None:
    batch = sig.decode([record(), record(age=50, city="Rome", visits=2.0, member=0)])
    assert batch["age"].tolist() == [30.0, 50.0]
    assert batch["city"].tolist() == ["Oslo", "Rome"]
    assert batch["visits"].dtype == np.int64
    assert batch["member"].tolist() == [True, False]


def test_decode_rows_in_column_order(sig: Signature) -> None:
    batch = sig.decode([[30.0, "Oslo", 1, True], [31, "Lima", 2, False]])
    assert batch["age"].dtype == np.float64
    assert batch["city"].tolist() == ["Oslo", "Lima"]


def test_decode_columns(sig: Signature) -> None:
    batch = sig.decode({"age": [1.0], "city": ["x"], "visits": [2], "member": [False]})
    assert {k: v.tolist() for k, v in batch.items()} == {
        "age": [1.0], "city": ["x"], "visits": [2], "member": [False]
    }


def test_decode_a_dataframe(sig: Signature, people: pd.DataFrame) -> None:
    batch = sig.decode(people)
    assert batch["visits"].tolist() == people["visits"].tolist()
    frame = sig.to_model_input(batch)
    pd.testing.assert_frame_equal(frame, people, check_dtype=False)


def test_decode_an_array_for_a_tensor() -> None:
    sig = infer_signature(np.zeros((2, 3)))
    assert sig.decode(np.ones((4, 3)))["input"].shape == (4, 3)
    assert sig.decode([[1, 2, 3]])["input"].dtype == np.float64
    assert sig.decode([{"input": [1, 2, 3]}])["input"].tolist() == [[1.0, 2.0, 3.0]]
    # a table, for a model registered with an array, is its rows
    frame = pd.DataFrame(np.ones((2, 3)), columns=["a", "b", "c"])
    assert sig.decode(frame)["input"].shape == (2, 3)


def test_variable_dimensions() -> None:
    sig = Signature(
        layout="tensor", inputs=[FieldSpec(name="tokens", datatype="INT32", shape=[-1, 2])]
    )
    assert sig.decode(np.zeros((1, 3, 2)))["tokens"].shape == (1, 3, 2)
    assert sig.decode(np.zeros((4, 7, 2)))["tokens"].shape == (4, 7, 2)
    with pytest.raises(InvalidInput, match=r"expected shape \[N, -1, 2\], got \[1, 3, 3\]"):
        sig.decode(np.zeros((1, 3, 3)))


# --- errors that name the field -------------------------------------------------------


def test_wrong_type_names_column_expectation_value_and_row(sig: Signature) -> None:
    rows = [record(), record(), record(), record(age="abc")]
    with pytest.raises(InvalidInput) as info:
        sig.decode(rows)
    assert str(info.value) == "column 'age': expected FP64, got string 'abc' at row 3"
    assert info.value.status_code == 400


def test_wrong_type_in_rows_and_dataframes(sig: Signature, people: pd.DataFrame) -> None:
    with invalid("column 'visits': expected INT64, got string '2' at row 1"):
        sig.decode([[30.0, "Oslo", 1, True], [31.0, "Lima", "2", False]])
    with pytest.raises(InvalidInput, match="column 'age': expected FP64, got string '30' at row 0"):
        sig.decode(people.assign(age=people["age"].astype(str).str.replace(".0", "")))


def test_missing_column(sig: Signature) -> None:
    with pytest.raises(InvalidInput, match="row 0: missing field 'member'"):
        sig.decode([{"age": 1.0, "city": "x", "visits": 1}])
    with pytest.raises(InvalidInput, match=r"missing field 'member' \(member: BOOL\)"):
        sig.decode({"age": [1.0], "city": ["x"], "visits": [1]})


def test_unknown_column(sig: Signature, people: pd.DataFrame) -> None:
    with pytest.raises(InvalidInput, match="row 1: unknown field 'zip'"):
        sig.decode([record(), record(zip="0150")])
    with pytest.raises(InvalidInput, match="unknown input 'extra'"):
        sig.decode(people.assign(extra=1))


def test_rows_of_the_wrong_length(sig: Signature) -> None:
    with invalid("expected rows of 4 values (age, city, visits, member), got rows of 3"):
        sig.decode([[1.0, "x", 1]])
    with pytest.raises(InvalidInput, match="got rows of different lengths"):
        sig.decode([[1.0, "x", 1, True], [1.0, "x", 1]])


def test_ragged_tensor() -> None:
    sig = infer_signature(np.zeros((2, 3)))
    with pytest.raises(InvalidInput, match="input 'input': rows have different lengths"):
        sig.decode([[1, 2, 3], [1, 2]])


def test_wrong_tensor_shape() -> None:
    sig = infer_signature(np.zeros((2, 3)))
    with invalid("input 'input': expected shape [N, 3], got [1, 4]"):
        sig.decode([[1, 2, 3, 4]])
    with pytest.raises(InvalidInput, match=r"expected shape \[N, 3\], got \[3\]"):
        sig.decode([1, 2, 3])


def test_nan_is_rejected_unless_the_model_allows_it(people: pd.DataFrame) -> None:
    strict = infer_signature(people)
    with pytest.raises(InvalidInput, match=r"column 'age': null/NaN at row 1 is not allowed"):
        strict.decode([record(), record(age=float("nan"))])
    with pytest.raises(InvalidInput, match=r"column 'age': inf at row 0 is not allowed"):
        strict.decode([record(age=float("inf"))])

    lenient = infer_signature(people, allow_nan=True)
    batch = lenient.decode([record(), record(age=float("nan"))])
    assert np.isnan(batch["age"][1])


def test_null_in_a_float_column(people: pd.DataFrame) -> None:
    strict = infer_signature(people)
    with pytest.raises(InvalidInput, match=r"^column 'age': null/NaN at row 0 is not allowed"):
        strict.decode([record(age=None)])
    lenient = infer_signature(people, allow_nan=True)
    assert np.isnan(lenient.decode([record(age=None)])["age"][0])
    # a missing city is allowed only with allow_nan too, and never a missing count
    assert lenient.decode([record(city=None)])["city"].tolist() == [None]
    with pytest.raises(InvalidInput, match="column 'visits': expected INT64, got null at row 0"):
        lenient.decode([record(visits=None)])


def test_bool_where_a_number_is_expected(sig: Signature) -> None:
    with invalid("column 'age': expected FP64, got boolean true at row 1"):
        sig.decode([record(), record(age=True)])
    with pytest.raises(InvalidInput, match="column 'visits': expected INT64, got boolean false"):
        sig.decode([record(visits=False)])


def test_integral_floats_count_as_integers(sig: Signature) -> None:
    assert sig.decode([record(visits=3.0)])["visits"].tolist() == [3]
    with invalid("column 'visits': expected INT64, got float 3.5 at row 0"):
        sig.decode([record(visits=3.5)])


def test_strings_are_never_parsed_as_numbers(sig: Signature) -> None:
    with invalid("column 'age': expected FP64, got string '30.5' at row 0"):
        sig.decode([record(age="30.5")])
    with pytest.raises(InvalidInput, match="column 'member': expected BOOL, got string 'true'"):
        sig.decode([record(member="true")])


def test_bytes_columns(sig: Signature) -> None:
    assert sig.decode([record(city=b"Oslo")])["city"].tolist() == [b"Oslo"]
    with invalid("column 'city': expected BYTES (string), got int 47 at row 1"):
        sig.decode([record(), record(city=47)])


def test_inputs_of_different_lengths(sig: Signature) -> None:
    with pytest.raises(InvalidInput, match="column 'city': has 1 rows, other inputs have 2"):
        sig.decode({"age": [1.0, 2.0], "city": ["x"], "visits": [1, 2], "member": [True, True]})


@pytest.mark.parametrize("empty", [[], pd.DataFrame()], ids=["list", "dataframe"])
def test_empty_input(empty: Any) -> None:
    sig = infer_signature(np.zeros((1, 2)))
    with pytest.raises(InvalidInput, match="input is empty: send at least one row"):
        sig.decode(empty)


def test_unreadable_input(sig: Signature) -> None:
    with pytest.raises(InvalidInput, match="cannot read input of type str"):
        sig.decode("age=3")


def test_several_tensors_are_sent_by_name() -> None:
    sig = infer_signature({"a": np.zeros((2, 2)), "b": np.zeros((2,))})
    with pytest.raises(InvalidInput, match="takes 2 named tensors; send them by name"):
        sig.decode([[1.0, 2.0]])
    model_input = sig.to_model_input(sig.decode({"a": [[1, 2]], "b": [3]}))
    assert set(model_input) == {"a", "b"}


# --- the model's edge -----------------------------------------------------------------


def test_to_model_input_shapes() -> None:
    columns = Signature(
        layout="columns",
        inputs=[FieldSpec(name="a", datatype="FP64"), FieldSpec(name="b", datatype="FP64")],
    )
    table = columns.to_model_input(columns.decode([[1, 2], [3, 4]]))
    assert isinstance(table, np.ndarray)
    assert table.tolist() == [[1.0, 2.0], [3.0, 4.0]]

    tensor = infer_signature(np.zeros((1, 2)))
    assert tensor.to_model_input(tensor.decode([[1, 2]])).shape == (1, 2)


def test_name_outputs() -> None:
    labels, scores = np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]])
    assert list(name_outputs({"y": labels}, [])) == ["y"]
    assert list(name_outputs((labels, scores), ["label", "score"])) == ["label", "score"]
    assert list(name_outputs((labels, scores), [])) == ["output-0", "output-1"]
    assert list(name_outputs(labels, [])) == ["predictions"]
    assert list(name_outputs(pd.DataFrame({"p": [1, 2]}), [])) == ["p"]
    # a list is rows, whatever they hold: numpy scalars from a loop are one output
    rows = name_outputs([np.float64(1.5), np.float64(2.5)], [])
    assert rows["predictions"].tolist() == [1.5, 2.5]
    records = name_outputs([{"label": "a", "score": 0.5}, {"label": "b", "score": 0.7}], [])
    assert records["label"].tolist() == ["a", "b"]
    assert records["score"].tolist() == [0.5, 0.7]


def test_sample_batch_decodes_the_stored_rows(sig: Signature, people: pd.DataFrame) -> None:
    batch = sig.sample_batch()
    assert batch["city"].tolist() == people["city"].head(5).tolist()
    with pytest.raises(InvalidInput, match="holds no sample rows"):
        Signature(layout="tensor", inputs=sig.inputs).sample_batch()


def test_columns_cut_from_one_table_are_checked_as_it() -> None:
    sig = infer_signature(pd.DataFrame({"a": [1.0], "b": [2.0], "c": [3.0]}))
    table = np.arange(12.0).reshape(4, 3)
    columns = {"a": table[:, 0], "b": table[:, 1], "c": table[:, 2]}
    batch = sig.validate(columns)
    assert all(batch[n] is columns[n] for n in "abc")  # checked, not copied
    table[2, 1] = np.nan
    with pytest.raises(InvalidInput, match=r"column 'b': null/NaN at row 2"):
        sig.validate(columns)


def test_typed_columns_of_any_making_are_checked_together_and_kept() -> None:
    # arrays of the signature's type made one by one (a batch job's, a stream's after
    # a round): one check for them all, the arrays handed on as they are
    sig = infer_signature(pd.DataFrame({"a": [1.0], "b": [2.0]}))
    columns = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])}
    batch = sig.validate(columns)
    assert all(batch[n] is columns[n] for n in "ab")
    columns["b"][1] = np.nan
    with pytest.raises(InvalidInput, match=r"column 'b': null/NaN at row 1"):
        sig.validate(columns)
    # another number type, or rows of another count: the column-by-column way
    assert sig.validate({"a": np.array([1, 2]), "b": np.array([3.0, 4.0])})["a"].dtype \
        == np.float64
    with pytest.raises(InvalidInput, match="has 1 rows, other inputs have 2"):
        sig.validate({"a": np.array([1.0, 2.0]), "b": np.array([3.0])})


def test_columns_of_a_wider_table_are_checked_each() -> None:
    # views of one table, but not its columns side by side: what lies between them
    # (here a NaN the model never sees) must not be checked in their place, nor a NaN
    # in them missed
    sig = infer_signature(pd.DataFrame({"a": [1.0], "c": [3.0]}))
    table = np.arange(12.0).reshape(4, 3)
    table[3, 2] = np.inf
    with pytest.raises(InvalidInput, match=r"column 'c': inf at row 3"):
        sig.validate({"a": table[:, 0], "c": table[:, 2]})
    table[3, 2], table[0, 1] = 11.0, np.nan
    assert sig.validate({"a": table[:, 0], "c": table[:, 2]})["c"].tolist() == [2, 5, 8, 11]
    swapped = infer_signature(pd.DataFrame({"a": [1.0], "b": [2.0]}))
    batch = swapped.validate({"a": table[1:, 1], "b": table[1:, 0]})  # in another order
    assert batch["a"].tolist() == [4, 7, 10]
