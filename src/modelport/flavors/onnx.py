"""ONNX models, run with onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import FlavorError
from modelport.flavors.base import Flavor, require

_ORT_TYPES: dict[str, type[Any]] = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32,
    "tensor(uint16)": np.uint16, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


class OnnxFlavor(Flavor):
    """Accepts an `onnx.ModelProto`, serialized bytes, or a path to a `.onnx` file.

    Inputs are fed by name; a single-input graph also takes the one tensor whatever the
    signature calls it. A table (from a DataFrame sample) feeds a single-input graph
    as one matrix and a graph with an input per column column by column. Inputs are
    cast to the graph's element types, so a float64 sample drives a float32 graph.
    Outputs keep the graph's names.
    """

    name = "onnx"

    @classmethod
    def save(cls, obj: Any, path: Path, *, trusted: bool = False) -> dict[str, Any]:
        if isinstance(obj, str | Path):
            obj = Path(obj).read_bytes()
        data = bytes(obj) if isinstance(obj, bytes | bytearray) else obj.SerializeToString()
        (path / "model.onnx").write_bytes(data)
        return {}

    @classmethod
    def read_file(cls, path: Path, *, trusted: bool = False) -> Any:
        return path.read_bytes()

    def load(self) -> None:
        ort = require("onnxruntime", "onnx")

        options = ort.SessionOptions()
        # the batcher gives one session big batches; a thread per core is plenty
        options.intra_op_num_threads = int(self.options.get("threads", 0))
        try:
            self.session = ort.InferenceSession(
                str(self.path / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise FlavorError(f"onnxruntime cannot load this model: {exc}") from exc
        self.inputs = [(i.name, _ORT_TYPES.get(i.type)) for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def predict(self, x: Any) -> Any:
        if type(x).__name__ == "DataFrame":
            x = x.to_numpy() if len(self.inputs) == 1 else {
                str(c): x[c].to_numpy().reshape(-1, 1) for c in x.columns
            }
        if not isinstance(x, dict):
            x = {self.inputs[0][0]: x}
        elif len(self.inputs) == 1 and self.inputs[0][0] not in x and len(x) == 1:
            x = {self.inputs[0][0]: next(iter(x.values()))}
        missing = [name for name, _ in self.inputs if name not in x]
        if missing:
            raise FlavorError(f"the ONNX graph needs inputs {missing}; got {sorted(x)}")
        feed = {
            name: np.asarray(x[name], dtype=dtype) if dtype else x[name]
            for name, dtype in self.inputs
        }
        return dict(zip(self.outputs, self.session.run(None, feed), strict=True))
