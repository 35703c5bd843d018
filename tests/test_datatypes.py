"""Datatype mapping and value coercion: what is accepted, and what errors say."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from modelport.datatypes import (
    DATATYPES,
    coerce,
    from_numpy,
    is_missing,
    jsonable,
    shape_matches,
    to_numpy,
)
from modelport.errors import InvalidInput

# --- datatype names -------------------------------------------------------------------


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BYTES"])
def test_numeric_datatypes_round_trip_through_numpy(datatype: str) -> None:
    assert from_numpy(to_numpy(datatype)) == datatype


@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [
        (np.dtype("<U5"), "BYTES"),
        (np.dtype("S3"), "BYTES"),
        (np.dtype(object), "BYTES"),
        (np.dtype("datetime64[ns]"), "BYTES"),
        (np.dtype(">f8"), "FP64"),  # byte order does not change the datatype
        (np.dtype(">i4"), "INT32"),
        (np.dtype(np.longdouble), "FP64"),
    ],
)
def test_from_numpy(dtype: np.dtype[Any], datatype: str) -> None:
    assert from_numpy(dtype) == datatype


def test_unknown_datatypes() -> None:
    with pytest.raises(InvalidInput, match="unknown datatype 'FLOAT'; expected one of BOOL"):
        to_numpy("FLOAT")
    with pytest.raises(InvalidInput, match="has no Open Inference Protocol datatype"):
        from_numpy(np.dtype(np.complex128))


# --- numbers --------------------------------------------------------------------------


def test_integers_are_accepted_as_floats() -> None:
    out = coerce([1, 2.5, 3], "FP32", "column 'x'")
    assert out.dtype == np.float32
    assert out.tolist() == [1.0, 2.5, 3.0]


def test_integral_floats_are_accepted_as_integers() -> None:
    out = coerce([1.0, 2, 3.0], "INT64", "column 'n'")
    assert out.dtype == np.int64
    assert out.tolist() == [1, 2, 3]


def test_fractional_float_for_an_integer_names_the_row() -> None:
    with pytest.raises(InvalidInput, match=r"^column 'n': expected INT32, got float 2.5 at row 1$"):
        coerce([1, 2.5], "INT32", "column 'n'")


def test_strings_are_never_parsed_as_numbers() -> None:
    message = r"^column 'age': expected FP64, got string '41' at row 2$"
    with pytest.raises(InvalidInput, match=message):
        coerce([40.0, 41.5, "41"], "FP64", "column 'age'")
    with pytest.raises(InvalidInput, match="got string '7' at row 0"):
        coerce(np.array(["7"]), "INT64", "column 'n'")


@pytest.mark.parametrize(
    "values",
    [[True, False], [1.5, True], [1, 2, False], np.array([True]), [[1.0, True]]],
    ids=["all-booleans", "mixed-float", "mixed-int", "numpy-bool", "nested"],
)
def test_booleans_never_count_as_numbers(values: Any) -> None:
    with pytest.raises(InvalidInput, match=r"expected FP64, got boolean (true|false) at row \d$"):
        coerce(values, "FP64", "input 'x'")


def test_integer_range_is_checked() -> None:
    with pytest.raises(InvalidInput, match=r"^column 'b': 300 at row 1 is out of range for UINT8$"):
        coerce([1, 300], "UINT8", "column 'b'")
    with pytest.raises(InvalidInput, match="-1 at row 0 is out of range for UINT32"):
        coerce([-1], "UINT32", "column 'b'")
    with pytest.raises(InvalidInput, match=r"\d+ at row 0 is out of range for INT64"):
        coerce([2**70], "INT64", "column 'b'")


def test_nested_values_report_the_row_not_the_position() -> None:
    rows = [[1.0, 2.0, 3.0], [4.0, 5.0, "six"]]
    with pytest.raises(InvalidInput, match=r"got string 'six' at row 1$"):
        coerce(rows, "FP32", "input 'x'")


def test_a_scalar_has_no_row() -> None:
    assert coerce(3, "INT64", "column 'n'").tolist() == 3
    with pytest.raises(InvalidInput, match=r"^column 'n': expected INT64, got string 'x'$"):
        coerce("x", "INT64", "column 'n'")


def test_ragged_input() -> None:
    with pytest.raises(InvalidInput, match="rows have different lengths"):
        coerce([[1, 2], [3]], "FP64", "input 'x'")


def test_empty_input_takes_the_datatype() -> None:
    assert coerce([], "FP32", "x").dtype == np.float32
    assert coerce([], "BYTES", "x").dtype == object


# --- missing values -------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), None, float("inf"), -math.inf])
def test_missing_and_infinite_floats_are_rejected_by_default(value: Any) -> None:
    message = r"at row 1 is not allowed \(this model rejects NaN/inf\)"
    with pytest.raises(InvalidInput, match=message):
        coerce([1.0, value], "FP64", "column 'x'")


def test_null_is_named_as_such() -> None:
    with pytest.raises(InvalidInput, match=r"^column 'x': null/NaN at row 2 is not allowed"):
        coerce([1.0, 2.0, None], "FP64", "column 'x'")


def test_missing_floats_are_nan_when_allowed() -> None:
    out = coerce([1.0, None, float("nan"), float("inf")], "FP64", "x", allow_nan=True)
    assert out.dtype == np.float64
    assert np.isnan(out[1:3]).all()
    assert np.isinf(out[3])


def test_null_is_never_an_integer_or_a_boolean() -> None:
    with pytest.raises(InvalidInput, match="expected INT64, got null at row 1"):
        coerce([1, None], "INT64", "column 'n'", allow_nan=True)
    with pytest.raises(InvalidInput, match="expected BOOL, got null at row 0"):
        coerce([None, True], "BOOL", "column 'ok'", allow_nan=True)


def test_is_missing() -> None:
    assert all(map(is_missing, [None, float("nan"), np.float32("nan")]))
    assert not any(map(is_missing, [0.0, "", float("inf")]))


# --- booleans -------------------------------------------------------------------------


def test_booleans_and_zero_one() -> None:
    assert coerce([True, False], "BOOL", "x").tolist() == [True, False]
    out = coerce([1, 0], "BOOL", "x")
    assert out.dtype == np.bool_
    assert out.tolist() == [True, False]


@pytest.mark.parametrize(
    ("values", "got"),
    [([True, 2], "int 2"), ([True, "true"], "string 'true'"), ([0.0], "float 0.0")],
)
def test_what_is_not_a_boolean(values: list[Any], got: str) -> None:
    with pytest.raises(InvalidInput, match=f"expected BOOL, got {got}"):
        coerce(values, "BOOL", "column 'ok'")


# --- strings (BYTES) ------------------------------------------------------------------


def test_bytes_take_strings_and_bytes() -> None:
    out = coerce(["a", b"b"], "BYTES", "column 's'")
    assert out.dtype == object
    assert out.tolist() == ["a", b"b"]
    assert coerce(np.array(["x", "yz"]), "BYTES", "s").tolist() == ["x", "yz"]


def test_numbers_are_never_turned_into_strings() -> None:
    message = r"^column 's': expected BYTES \(string\), got int 5 at row 1$"
    with pytest.raises(InvalidInput, match=message):
        coerce(["a", 5], "BYTES", "column 's'")
    with pytest.raises(InvalidInput, match="got int 1 at row 0"):
        coerce(np.array([1, 2]), "BYTES", "column 's'")
    with pytest.raises(InvalidInput, match="got boolean true at row 0"):
        coerce([True], "BYTES", "column 's'")


def test_null_strings_only_when_allowed() -> None:
    with pytest.raises(InvalidInput, match=r"expected BYTES \(string\), got null at row 1"):
        coerce(["a", None], "BYTES", "column 's'")
    out = coerce(np.array(["a", None, float("nan")], dtype=object), "BYTES", "s", allow_nan=True)
    assert out.tolist() == ["a", None, None]


def test_dates_travel_as_iso_strings() -> None:
    dates = np.array(["2024-01-02", "2024-03-04"], dtype="datetime64[D]")
    assert coerce(dates, "BYTES", "d").tolist() == ["2024-01-02", "2024-03-04"]


# --- back to JSON ---------------------------------------------------------------------


def test_jsonable_turns_nan_and_infinities_into_null() -> None:
    assert jsonable(np.array([1.0, np.nan, np.inf, -np.inf])) == [1.0, None, None, None]
    assert jsonable(np.array([[1.0, np.nan], [2.0, 3.0]], dtype=np.float32)) == [
        [1.0, None], [2.0, 3.0]
    ]


def test_jsonable_objects() -> None:
    values = np.array([b"caf\xc3\xa9", "x", None, float("nan"), np.int64(3)], dtype=object)
    assert jsonable(values) == ["café", "x", None, None, 3]
    assert jsonable(np.array([[b"a"], [b"\xff"]], dtype=object)) == [["a"], ["\\xff"]]


def test_jsonable_plain_types() -> None:
    assert jsonable(np.array([1, 2], dtype=np.int8)) == [1, 2]
    assert jsonable(np.array([True, False])) == [True, False]
    assert jsonable(np.array(["2024-01-02"], dtype="datetime64[D]")) == ["2024-01-02"]


def test_shape_matches_variable_dimensions() -> None:
    assert shape_matches([3, 4], [-1, 4])
    assert shape_matches([], [])
    assert not shape_matches([3, 5], [-1, 4])
    assert not shape_matches([3], [3, 1])
