"""A registered model version: the registry's record of it, and the model loaded and
ready to predict."""

from __future__ import annotations

import asyncio
from collections.abc import Set as AbstractSet
from concurrent.futures import Executor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from modelport.errors import ModelOutputError
from modelport.flavors import get_flavor
from modelport.flavors.base import Inputs
from modelport.signature import Batch, Signature, check_output_rows, rows_of


class ModelVersion(BaseModel):
    """One registered version of a model, as the registry records it."""

    name: str
    version: int
    flavor: str
    options: dict[str, Any]
    signature: Signature
    metrics: dict[str, Any]
    params: dict[str, Any]
    tags: dict[str, Any]
    profile: dict[str, Any]
    """Per-feature quantiles and histogram of the reference data (see modelport.profile)."""
    sha256: str
    size: int
    created_at: datetime
    created_by: str | None = None
    aliases: list[str] = []

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"



class Model:
    """What `Registry.load` returns and what every trigger calls.

    `predict(X)` is the convenience for people (any input the signature can read,
    returns the first output); `predict_batch` is the typed core; `infer` runs it off
    the event loop for the server, the stream worker and the batch runner.
    """

    def __init__(self, record: ModelVersion, path: Path, *, trusted: bool = False) -> None:
        self.record = record
        self.path = path
        self.flavor = get_flavor(record.flavor)(path, record.options, trusted=trusted)
        self._array_input = False
        """Whether a model registered with a DataFrame is handed an array (`load`)."""

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def version(self) -> int:
        return self.record.version

    @property
    def signature(self) -> Signature:
        return self.record.signature

    def load(self) -> Model:
        self.flavor.load()
        sig = self.signature
        columns = tuple(s.name for s in sig.inputs) \
            if sig.model_input == "dataframe" and sig.numeric_block else None
        self._array_input = self.flavor.prepare(
            Inputs(finite=not sig.allow_nan, numeric_columns=columns))
        return self

    def predict_batch(self, batch: Batch, outputs: AbstractSet[str] | None = None) -> Batch:
        """Predict on `batch` as `Signature.validate` returns it (checked: its types,
        shapes and, unless the signature allows them, no NaN or infinities).

        `outputs`: only these of the signature's outputs (`Signature.output_names`),
        which the flavor may then compute alone; None or all of them: every output."""
        x = self.signature.to_model_input(batch, array=self._array_input)
        every = self.signature.output_names
        if outputs is None or not every or outputs >= every:
            raw = self.flavor.predict(x)
        else:
            raw = self.flavor.predict_only(x, outputs)
        answer = self.signature.encode_outputs(raw)
        if outputs is not None and every and answer.keys() != outputs:
            missing = outputs - answer.keys()
            if missing:
                raise ModelOutputError(f"model {self.name}:{self.version} did not answer "
                                       f"{sorted(missing)}")
            answer = {k: v for k, v in answer.items() if k in outputs}
        return check_output_rows(answer, rows_of(batch), f"{self.name}:{self.version}")

    def predict(self, data: Any, *, output: str | None = None) -> np.ndarray:
        """Predict on rows, records, an array or a DataFrame; returns one output."""
        outputs = self.predict_batch(self.signature.decode(data))
        return outputs[output] if output else next(iter(outputs.values()))

    async def infer(self, batch: Batch, executor: Executor | None = None) -> Batch:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self.predict_batch, batch)

    def __repr__(self) -> str:
        return f"<Model {self.name}:{self.version} ({self.record.flavor})>"
