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

import functools
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from modelport.datatypes import (
    DATATYPES,
    coerce,
    column_datatype,
    from_numpy,
    plain,
    shape_matches,
    to_numpy,
)
from modelport.errors import InvalidInput, ModelOutputError

Batch = dict[str, np.ndarray]
SAMPLE_ROWS = 5


class FieldSpec(BaseModel):
    """One named input or output."""

    name: str
    datatype: str
    """Open Inference Protocol datatype: FP64, INT64, BOOL, BYTES, …"""
    shape: list[int] = Field(default_factory=list)
    """Shape of one row; [] for a scalar column, -1 for a variable dimension."""

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        # caught when a signature is written, not as a 400 on the first request
        if value not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r}; expected one of {', '.join(DATATYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _dimensions(cls, value: list[int]) -> list[int]:
        if any(d < -1 for d in value):
            raise ValueError(f"shape {value}: a dimension is a size, or -1 for any size")
        return value

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
        if type(data) is list and data and type(data[0]) is list:
            return self._from_rows(data)  # rows as JSON gives them: every request's case
        if isinstance(data, Mapping):
            return self.validate({str(k): v for k, v in data.items()})
        if _is_dataframe(data):
            if self.layout == "tensor" and len(self.inputs) == 1 and self.inputs[0].shape:
                # a table for a model registered with an array: its columns are the row
                return self._from_rows(data.to_numpy())
            return self.validate(_frame_columns(data))
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
            missing = missing_field(names, record)
            if missing:
                raise InvalidInput(f"row {i}: {missing}")
        return self.validate({s.name: [r[s.name] for r in records] for s in self.inputs})

    def _from_rows(self, rows: Any) -> Batch:
        if self.layout == "tensor" and len(self.inputs) == 1:
            return self.validate({self.inputs[0].name: rows})
        if self.layout == "tensor":
            raise InvalidInput(
                f"this model takes {len(self.inputs)} named tensors; send them by name"
            )
        width = len(self.inputs)
        fast = self._uniform_table(rows, width)
        if fast is not None:  # typed and checked already: no column-by-column pass
            return {s.name: fast[:, i] for i, s in enumerate(self.inputs)}
        arr = rows if isinstance(rows, np.ndarray) else _table(rows, width)
        if arr.ndim != 2 or arr.shape[1] != width:
            if arr.ndim == 2:
                got = f"rows of {arr.shape[1]}"
            elif arr.ndim == 1 and any(isinstance(r, list | tuple) for r in arr.tolist()):
                got = "rows of different lengths"
            else:
                got = f"an array of shape {list(arr.shape)}"
            raise InvalidInput(
                f"expected rows of {width} values "
                f"({', '.join(s.name for s in self.inputs)}), got {got}"
            )
        return self.validate({s.name: arr[:, i] for i, s in enumerate(self.inputs)})

    def _uniform_table(self, rows: Any, width: int) -> np.ndarray | None:
        """Rows of one numeric type converted as one array (the common case, and on the
        path of every request); None sends them the column-by-column way, which also
        names the column at fault."""
        kinds = {s.datatype for s in self.inputs}
        if isinstance(rows, np.ndarray) or len(kinds) != 1 or "BYTES" in kinds or any(
                s.shape for s in self.inputs):
            return None
        try:
            arr = coerce(rows, next(iter(kinds)), "rows", allow_nan=self.allow_nan)
        except InvalidInput:
            return None
        return arr if arr.ndim == 2 and arr.shape[1] == width and len(arr) else None

    # shadows pydantic's deprecated `BaseModel.validate` classmethod, which v2 never calls
    def validate(self, batch: Mapping[str, Any]) -> Batch:  # type: ignore[override]
        """Check names, dtypes, shapes and row counts; return typed arrays."""
        names = [spec.name for spec in self.inputs]
        known = set(names)
        for key in batch:
            if key not in known:
                raise InvalidInput(f"unknown input {key!r}; this model takes {names}")
        if self._checked_as_one_table(batch):
            return {n: batch[n] for n in names}
        out: Batch = {}
        rows: int | None = None
        for spec in self.inputs:
            if spec.name not in batch:
                raise InvalidInput(f"{missing_field({spec.name}, batch)} ({spec.describe()})")
            where = f"{'column' if self.layout == 'columns' else 'input'} {spec.name!r}"
            arr = coerce(batch[spec.name], spec.datatype, where, allow_nan=self.allow_nan)
            if arr.ndim == 0:
                arr = arr.reshape(1)
            if arr.shape[0] == 0:
                raise InvalidInput("input is empty: send at least one row")
            if not shape_matches(arr.shape[1:], spec.shape):
                raise InvalidInput(
                    f"{where}: expected shape [N, {', '.join(map(str, spec.shape))}], "
                    f"got {list(arr.shape)}"
                    if spec.shape
                    else f"{where}: expected one value per row, got shape {list(arr.shape)}"
                )
            if rows is not None and arr.shape[0] != rows:
                raise InvalidInput(f"{where}: has {arr.shape[0]} rows, other inputs have {rows}")
            rows = arr.shape[0]
            out[spec.name] = arr
        return out

    # --- the model's edge -----------------------------------------------------------

    def to_model_input(self, batch: Batch, *, array: bool = False) -> Any:
        """What the model object is called with: a DataFrame, a table or a tensor.

        `array` hands a model that takes a DataFrame the table of its values instead,
        for a model known to read both alike (`Flavor.prepare`)."""
        if self.model_input == "dataframe" and not array:
            import pandas as pd

            columns = [batch[s.name] for s in self.inputs]
            names = _column_index(tuple(s.name for s in self.inputs))
            if len({c.dtype for c in columns}) == 1 and all(c.ndim == 1 for c in columns):
                # one block: the model reads it back as an array without a copy per column
                return pd.DataFrame(np.column_stack(columns), columns=names, copy=False)
            return pd.DataFrame(dict(zip(names, columns, strict=True)))
        if self.layout == "columns":
            return np.column_stack([batch[s.name] for s in self.inputs])
        if len(self.inputs) == 1:
            return batch[self.inputs[0].name]
        return {s.name: batch[s.name] for s in self.inputs}

    def _checked_as_one_table(self, batch: Mapping[str, Any]) -> bool:
        """Whether the inputs are arrays of the signature's one number type, one value
        per row, as many rows each (a stream's or a batch job's columns), with no NaN
        or infinity where none is allowed: checked in one pass over them all; False to
        check column by column, which also names what is wrong."""
        if not self.numeric_block or len(batch) != len(self.inputs):
            return False
        dtype = self.inputs[0].dtype
        columns: list[np.ndarray] = []
        shape: tuple[int, ...] = (0,)
        for spec in self.inputs:
            column = batch.get(spec.name)
            if type(column) is not np.ndarray or column.dtype != dtype \
                    or column.ndim != 1 or (columns and column.shape != shape):
                return False
            shape = column.shape
            columns.append(column)
        if not shape[0]:
            return False
        # one pass over a copy of them all: cheaper than a check per column
        return dtype.kind != "f" or self.allow_nan or bool(
            np.isfinite(np.column_stack(columns)).all())

    @property
    def numeric_block(self) -> bool:
        """Whether the inputs are columns of one number type: one array holds them."""
        kinds = {s.datatype for s in self.inputs}
        return self.layout == "columns" and len(kinds) == 1 and not any(
            s.shape for s in self.inputs) and to_numpy(kinds.pop()).kind in "iuf"

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

    @property
    def input_names(self) -> frozenset[str]:
        return frozenset(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> frozenset[str]:
        """The declared outputs' names; empty when the signature declares none."""
        return frozenset(spec.name for spec in self.outputs)


@functools.lru_cache(maxsize=64)
def _column_index(names: tuple[str, ...]) -> Any:
    """A DataFrame's column labels, made once per signature: pandas makes a list of
    strings into an index of its string type each time, which costs more than the
    DataFrame itself."""
    import pandas as pd

    return pd.Index(list(names), dtype=object)


def rows_of(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def missing_field(names: AbstractSet[str], record: Mapping[str, Any]) -> str | None:
    """What to say when `record` lacks one of `names`, else None: the one wording for
    a field absent, whichever trigger sent the record (a field sent as null is not
    missing: the signature's check says whether null is allowed)."""
    if record.keys() >= names:  # the usual case, compared in C
        return None
    return f"missing field {min(names - record.keys())!r}"


def check_output_rows(outputs: Batch, rows: int, model: str) -> Batch:
    """`outputs`, when each has one row per input row; else a `ModelOutputError` naming
    `model` and the counts (a batch is shared by callers: a row short or extra would
    hand each of them someone else's answer)."""
    for name, values in outputs.items():
        if len(values) != rows:
            raise ModelOutputError(
                f"model {model} answered {len(values)} rows of {name!r} for a batch of "
                f"{rows} rows; no answer from it is used")
    return outputs


def name_outputs(raw: Any, names: Sequence[str]) -> Batch:
    """Give a model's raw output output names.

    A dict or a DataFrame names its own outputs, and so do records (a list of dicts,
    one per row); a tuple of arrays is one output per element, named by `names`;
    anything else (an array, a list of per-row values) is a single output.
    """
    if isinstance(raw, Mapping):
        return {str(k): np.asarray(v) for k, v in raw.items()}
    if _is_dataframe(raw):
        return _frame_columns(raw)
    if isinstance(raw, tuple) and raw and all(hasattr(r, "shape") for r in raw):
        keys = list(names) if len(names) == len(raw) else [f"output-{i}" for i in range(len(raw))]
        return {k: np.asarray(v) for k, v in zip(keys, raw, strict=True)}
    if isinstance(raw, list) and raw and all(isinstance(r, Mapping) for r in raw):
        return {str(k): np.asarray([r.get(k) for r in raw]) for k in raw[0]}
    return {names[0] if names else "predictions": np.asarray(raw)}


def infer_signature(
    sample: Any, outputs: Batch | None = None, *, allow_nan: bool = False
) -> Signature:
    """Infer a signature from a sample input (array, DataFrame, records or columns).

    A DataFrame or records give a `columns` signature whose model is called with a
    DataFrame; an array gives one tensor named `input`; a mapping of name to arrays
    gives one tensor per name. The first rows are kept as the signature's sample.
    """
    if _is_dataframe(sample):
        columns = _frame_columns(sample)
        sig = _columns_signature({k: column_datatype(v) for k, v in columns.items()})
        rows = _rows_of(columns, min(SAMPLE_ROWS, len(sample)))
    elif isinstance(sample, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in sample.items()}
        inputs = [
            FieldSpec(name=k, datatype=from_numpy(a.dtype), shape=list(a.shape[1:]))
            for k, a in arrays.items()
        ]
        sig = Signature(layout="tensor", inputs=inputs)
        rows = _rows_of(arrays, min(SAMPLE_ROWS, _rows(arrays)))
    elif isinstance(sample, Sequence) and sample and all(isinstance(r, Mapping) for r in sample):
        # every field any record has, in order of appearance; a record lacking one is
        # then reported by name when the sample is decoded
        names = list(dict.fromkeys(str(k) for r in sample for k in r))
        columns = {n: np.asarray([r.get(n) for r in sample], dtype=object) for n in names}
        sig = _columns_signature({k: column_datatype(v) for k, v in columns.items()})
        rows = [{str(k): v for k, v in r.items()} for r in sample[:SAMPLE_ROWS]]
    else:
        arr = np.asarray(sample)
        if arr.ndim < 2:
            raise InvalidInput("sample_input must have a batch dimension: rows x features")
        spec = FieldSpec(name="input", datatype=from_numpy(arr.dtype), shape=list(arr.shape[1:]))
        sig = Signature(layout="tensor", inputs=[spec])
        rows = _rows_of({"input": arr}, min(SAMPLE_ROWS, len(arr)))
    sig.allow_nan = allow_nan
    sig.sample = [{k: plain(v) for k, v in r.items()} for r in rows]
    if outputs is not None:
        sig.outputs = output_specs(outputs)
    return sig


def output_specs(outputs: Batch) -> list[FieldSpec]:
    """Specs of a model's named outputs, as a batch of them shows them."""
    return [FieldSpec(name=k, datatype=from_numpy(v.dtype), shape=list(v.shape[1:]))
            for k, v in outputs.items()]


def sample_rows(batch: Batch) -> list[dict[str, Any]]:
    """The first rows of a decoded batch, as a signature keeps its sample."""
    n = min(SAMPLE_ROWS, min((len(v) for v in batch.values()), default=0))
    return [{k: plain(v) for k, v in r.items()} for r in _rows_of(batch, n)]


def _columns_signature(datatypes: Mapping[str, str]) -> Signature:
    inputs = [FieldSpec(name=name, datatype=dt) for name, dt in datatypes.items()]
    return Signature(layout="columns", inputs=inputs, model_input="dataframe")


def _frame_columns(frame: Any) -> Batch:
    return {str(c): frame[c].to_numpy() for c in frame.columns}


def _table(rows: Any, width: int) -> np.ndarray:
    try:
        return np.asarray(rows, dtype=object)
    except ValueError:
        raise InvalidInput(f"rows have different lengths; expected {width} values each") from None


def _rows(arrays: Mapping[str, np.ndarray]) -> int:
    return min((a.shape[0] for a in arrays.values() if a.ndim), default=0)


def _rows_of(arrays: Mapping[str, np.ndarray], n: int) -> list[dict[str, Any]]:
    return [{k: a[i] for k, a in arrays.items()} for i in range(n)]


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns")
