"""Reading what a user has on disk: a trained model file and a few sample rows."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import FlavorError, InvalidInput, ModelportError
from modelport.flavors import get_flavor
from modelport.signature import Signature

# A model file's suffix → the flavor that reads it.
SUFFIX_FLAVORS = {
    ".skops": "sklearn",
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".onnx": "onnx",
    ".txt": "lightgbm",
    ".json": "xgboost",
    ".ubj": "xgboost",
}
SAMPLE_SUFFIXES = (".csv", ".npy", ".json")


def read_model(path: Path, flavor: str | None, *, trusted: bool) -> tuple[Any, str | None]:
    """Read a model object; returns it and the flavor to register it with.

    The file is read by the flavor that owns its suffix (or by `flavor` for a suffix
    nobody owns). The returned flavor is `flavor` when given; for a pickle or skops
    file it is None, so that the registry picks it from the object (a LightGBM
    estimator in a .joblib is then saved natively); otherwise the reading flavor.
    """
    reader = SUFFIX_FLAVORS.get(path.suffix.lower()) or flavor
    if reader is None:
        known = ", ".join(SUFFIX_FLAVORS)
        raise FlavorError(f"cannot tell the flavor of {path.name} from its suffix ({known}); "
                          "pass --flavor")
    try:
        obj = get_flavor(reader).read_file(path, trusted=trusted)
    except ModelportError:
        raise
    except Exception as exc:
        untrusted = "untrusted" in type(exc).__name__.lower()  # skops' UntrustedTypes…
        hint = "; pass --trusted if you trust where it came from" if untrusted else ""
        raise FlavorError(
            f"cannot read {path.name} as a {reader} model: {type(exc).__name__}: {exc}{hint}"
        ) from exc
    if flavor is not None:
        return obj, flavor
    return obj, None if reader == "sklearn" else reader


def read_signature(path: Path) -> Signature:
    """A signature written by hand, in JSON or YAML (`Signature`'s fields)."""
    import yaml
    from pydantic import ValidationError

    try:
        return Signature.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read {path.name}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise InvalidInput(f"{path.name}: not a signature: {where}: {first['msg']}") from exc


def read_sample(path: Path) -> Any:
    """Rows from a .csv (pandas when installed), .npy or .json (records) file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _read_csv(path)
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".json":
            return _read_json(path)
    except ModelportError:
        raise
    except (OSError, ValueError, csv.Error) as exc:
        raise InvalidInput(f"cannot read {path.name}: {exc}") from exc
    raise InvalidInput(f"{path.name}: a sample is a {', '.join(SAMPLE_SUFFIXES)} file")


def _read_csv(path: Path) -> Any:
    if importlib.util.find_spec("pandas") is not None:
        import pandas as pd

        return pd.read_csv(path)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise InvalidInput(f"{path.name}: expected a header line and at least one row")
    header, body = rows[0], rows[1:]
    columns = {name: [row[i] for row in body] for i, name in enumerate(header)}
    typed = {name: _typed(values) for name, values in columns.items()}
    if all(v.dtype.kind in "iuf" for v in typed.values()):
        # without pandas a model takes arrays: hand over the numeric table in column order
        return np.column_stack(list(typed.values()))
    plain = {name: values.tolist() for name, values in typed.items()}
    return [{name: plain[name][i] for name in header} for i in range(len(body))]


def _typed(values: list[str]) -> np.ndarray:
    for dtype in (np.int64, np.float64):
        try:
            return np.asarray(values, dtype=dtype)
        except ValueError:
            continue
    return np.asarray(values, dtype=object)


def _read_json(path: Path) -> Any:
    data = json.loads(path.read_text())
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return data
    if isinstance(data, list) and data and all(isinstance(r, list) for r in data):
        return np.asarray(data)
    if isinstance(data, dict) and data:
        return {str(k): np.asarray(v) for k, v in data.items()}
    raise InvalidInput(
        f"{path.name}: expected records ([{{\"col\": 1.0, ...}}, ...]), rows ([[1.0, ...], ...]) "
        "or named tensors ({\"input\": [[...], ...]})"
    )
