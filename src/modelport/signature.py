"""Signatures: a model's named, typed inputs and outputs, and the checks they drive.

A signature has one of two layouts:

- ``columns`` — tabular: each input is a named scalar column (``age: FP64``); the model
  receives a table (a pandas DataFrame, or a 2-D array in column order).
- ``tensor`` — each input is a named tensor with a per-row shape (``image: FP32 [28, 28]``,
  ``-1`` for a variable dimension); the model receives the array itself.

Everywhere inside modelport a batch is a ``dict[str, np.ndarray]``: one array per input
(or output), all sharing the leading batch dimension. `Signature.decode` turns what a
user or a request sends (arrays, DataFrames, records, rows) into that, validating as it
goes; `to_model_input` and `encode_outputs` convert at the model's edge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from modelport.datatypes import coerce, from_numpy, jsonable, shape_matches, to_numpy
from modelport.errors import InvalidInput

Batch = dict[str, np.ndarray]
SAMPLE_ROWS = 5


class FieldSpec(BaseModel):
    """One named input or output."""

    name: str
    datatype: str
    """Open Inference Protocol datatype: FP64, INT64, BOOL, BYTES, …"""
    shape: list[int] = Field(default_factory=list)
    """Shape of one row; [] for a scalar column, -1 for a variable dimension."""

    @property
    def dtype(self) -> np.dtype[Any]:
        return to_numpy(self.datatype)

    def describe(self) -> str:
        dims = f" {self.shape}" if self.shape else ""
        return f"{self.name}: {self.datatype}{dims}"


class Signature(BaseModel):
    """Inputs, outputs, and how the model wants its input handed over."""

    layout: Literal["columns", "tensor"]
    inputs: list[FieldSpec]
    outputs: list[FieldSpec] = Field(default_factory=list)
    model_input: Literal["ndarray", "dataframe"] = "ndarray"
    """What the model object is called with."""
    allow_nan: bool = False
    """Accept NaN/inf (and null) in float inputs."""
    sample: list[dict[str, Any]] = Field(default_factory=list)
    """A few input rows as records: smoke tests after a load, examples in the docs."""

    # --- reading user input ---------------------------------------------------------

    def decode(self, data: Any) -> Batch:
        """Validate and convert `data` into a batch; raises InvalidInput naming the field.

        Accepts a numpy array, a pandas DataFrame, a list of records (dicts), a list of
        rows (lists, in input/column order), or a mapping of input name to values.
        """
        if isinstance(data, Mapping):
            return self.validate({str(k): v for k, v in data.items()})
        if _is_dataframe(data):
            return self.validate({str(c): data[c].to_numpy() for c in data.columns})
        if isinstance(data, np.ndarray):
            return self._from_rows(data)
        if isinstance(data, Sequence) and not isinstance(data, str | bytes):
            if not data:
                raise InvalidInput("input is empty: send at least one row")
            if all(isinstance(r, Mapping) for r in data):
                return self.from_records(data)
            return self._from_rows(data)
        raise InvalidInput(
            f"cannot read input of type {type(data).__name__}: send rows, records or columns"
        )

    def from_records(self, records: Sequence[Mapping[str, Any]]) -> Batch:
        names = {spec.name for spec in self.inputs}
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise InvalidInput(f"row {i}: expected an object of named values")
            unknown = set(record) - names
            if unknown:
                raise InvalidInput(
                    f"row {i}: unknown field {sorted(unknown)[0]!r}; expected {sorted(names)}"
                )
            missing = names - set(record)
            if missing:
                raise InvalidInput(f"row {i}: missing field {sorted(missing)[0]!r}")
        return self.validate({s.name: [r[s.name] for r in records] for s in self.inputs})

    def _from_rows(self, rows: Any) -> Batch:
        if self.layout == "tensor" and len(self.inputs) == 1:
            return self.validate({self.inputs[0].name: rows})
        if self.layout == "tensor":
            raise InvalidInput(
                f"this model takes {len(self.inputs)} named tensors; send them by name"
            )
        arr = rows if isinstance(rows, np.ndarray) else _table(rows, len(self.inputs))
        if arr.ndim != 2 or arr.shape[1] != len(self.inputs):
            got = arr.shape[1] if arr.ndim == 2 else "not a table"
            raise InvalidInput(
                f"expected rows of {len(self.inputs)} values "
                f"({', '.join(s.name for s in self.inputs)}), got {got}"
            )
        return self.validate({s.name: arr[:, i] for i, s in enumerate(self.inputs)})

    def validate(self, batch: Mapping[str, Any]) -> Batch:
        """Check names, dtypes, shapes and row counts; return typed arrays."""
        names = [spec.name for spec in self.inputs]
        for key in batch:
            if key not in names:
                raise InvalidInput(f"unknown input {key!r}; this model takes {names}")
        out: Batch = {}
        rows: int | None = None
        for spec in self.inputs:
            if spec.name not in batch:
                raise InvalidInput(f"missing input {spec.name!r} ({spec.describe()})")
            where = f"{'column' if self.layout == 'columns' else 'input'} {spec.name!r}"
            arr = coerce(batch[spec.name], spec.datatype, where, allow_nan=self.allow_nan)
            if arr.ndim == 0:
                arr = arr.reshape(1)
            if not shape_matches(arr.shape[1:], spec.shape):
                raise InvalidInput(
                    f"{where}: expected shape [N, {', '.join(map(str, spec.shape))}]"
                    if spec.shape
                    else f"{where}: expected one value per row, got shape {list(arr.shape)}"
                )
            if rows is not None and arr.shape[0] != rows:
                raise InvalidInput(f"{where}: has {arr.shape[0]} rows, other inputs have {rows}")
            rows = arr.shape[0]
            out[spec.name] = arr
        if not rows:
            raise InvalidInput("input is empty: send at least one row")
        return out

    # --- the model's edge -----------------------------------------------------------

    def to_model_input(self, batch: Batch) -> Any:
        """What the model object is called with: a DataFrame, a table or a tensor."""
        if self.model_input == "dataframe":
            import pandas as pd

            return pd.DataFrame({s.name: batch[s.name] for s in self.inputs})
        if self.layout == "columns":
            return np.column_stack([batch[s.name] for s in self.inputs])
        if len(self.inputs) == 1:
            return batch[self.inputs[0].name]
        return {s.name: batch[s.name] for s in self.inputs}

    def encode_outputs(self, raw: Any) -> Batch:
        """Name the model's raw result by the output specs (or infer names if none)."""
        return name_outputs(raw, [s.name for s in self.outputs])

    def sample_batch(self) -> Batch:
        if not self.sample:
            raise InvalidInput("this signature holds no sample rows")
        return self.from_records(self.sample) if self.layout == "columns" else self.validate(
            {s.name: [r[s.name] for r in self.sample] for s in self.inputs}
        )

    def describe(self) -> str:
        return ", ".join(spec.describe() for spec in self.inputs)


def name_outputs(raw: Any, names: Sequence[str]) -> Batch:
    """Give a model's raw output (array, tuple, dict, DataFrame) output names."""
    if isinstance(raw, Mapping):
        return {str(k): np.asarray(v) for k, v in raw.items()}
    if _is_dataframe(raw):
        return {str(c): raw[c].to_numpy() for c in raw.columns}
    if isinstance(raw, tuple | list) and raw and all(hasattr(r, "shape") for r in raw):
        keys = list(names) if len(names) == len(raw) else [f"output-{i}" for i in range(len(raw))]
        return {k: np.asarray(v) for k, v in zip(keys, raw, strict=True)}
    return {names[0] if names else "predictions": np.asarray(raw)}


def infer_signature(
    sample: Any, outputs: Batch | None = None, *, allow_nan: bool = False
) -> Signature:
    """Infer a signature from a sample input (array, DataFrame, records or columns)."""
    if _is_dataframe(sample):
        inputs = [
            FieldSpec(name=str(c), datatype=_column_datatype(sample[c].to_numpy()))
            for c in sample.columns
        ]
        sig = Signature(layout="columns", inputs=inputs, model_input="dataframe")
        rows = sample.head(SAMPLE_ROWS).to_dict(orient="records")
    elif isinstance(sample, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in sample.items()}
        inputs = [
            FieldSpec(name=k, datatype=from_numpy(a.dtype), shape=list(a.shape[1:]))
            for k, a in arrays.items()
        ]
        sig = Signature(layout="tensor", inputs=inputs)
        rows = [{k: a[i].tolist() for k, a in arrays.items()}
                for i in range(min(SAMPLE_ROWS, _rows(arrays)))]
    elif isinstance(sample, Sequence) and sample and all(isinstance(r, Mapping) for r in sample):
        names = list(sample[0])
        inputs = [
            FieldSpec(name=str(n), datatype=_column_datatype(np.asarray([r[n] for r in sample])))
            for n in names
        ]
        sig = Signature(layout="columns", inputs=inputs, model_input="dataframe")
        rows = [dict(r) for r in sample[:SAMPLE_ROWS]]
    else:
        arr = np.asarray(sample)
        if arr.ndim < 2:
            raise InvalidInput("sample_input must have a batch dimension: rows × features")
        spec = FieldSpec(name="input", datatype=from_numpy(arr.dtype), shape=list(arr.shape[1:]))
        sig = Signature(layout="tensor", inputs=[spec])
        rows = [{"input": r.tolist()} for r in arr[:SAMPLE_ROWS]]
    sig.allow_nan = allow_nan
    sig.sample = [{k: _plain(v) for k, v in r.items()} for r in rows]
    if outputs is not None:
        sig.outputs = [
            FieldSpec(name=k, datatype=from_numpy(v.dtype), shape=list(v.shape[1:]))
            for k, v in outputs.items()
        ]
    return sig


def _column_datatype(values: np.ndarray) -> str:
    if values.dtype.kind == "O":
        if all(isinstance(v, str | bytes) or v is None for v in values.tolist()):
            return "BYTES"
        values = np.asarray(values.tolist())
    return from_numpy(values.dtype)


def _table(rows: Any, width: int) -> np.ndarray:
    try:
        return np.asarray(rows, dtype=object)
    except ValueError:
        raise InvalidInput(f"rows have different lengths; expected {width} values each") from None


def _rows(arrays: Mapping[str, np.ndarray]) -> int:
    return min((a.shape[0] for a in arrays.values() if a.ndim), default=0)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return jsonable(value)
    if isinstance(value, float) and value != value:  # NaN: JSON has no NaN
        return None
    return value


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns")
