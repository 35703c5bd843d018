"""Drift of logged inputs against the profile stored with their model version.

The prediction log keeps each sampled row's inputs as JSON; here they become one array
per profiled feature (a tensor input's `name[j]` is position j of `name`) and are
compared with the reference by the population stability index (`profile.psi`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from modelport.profile import category, psi

SHIFT = 0.1
"""PSI above this: the feature moved enough to look at."""
DRIFT = 0.25
"""PSI above this: a significant drift."""
MIN_ROWS = 100
"""Fewer live values than this flag nothing: sampling noise alone gives a PSI of about
(bins - 1) / rows, 0.3 for 30 rows over 10 bins, which would read as drift."""

Level = Literal["stable", "shift", "drift", "few rows", "n/a"]
_POSITION = re.compile(r"(.+)\[(\d+)\]")


def level(value: float | None, rows: int = MIN_ROWS) -> Level:
    if value is None:
        return "n/a"
    if rows < MIN_ROWS:
        return "few rows"
    return "drift" if value > DRIFT else "shift" if value > SHIFT else "stable"


@dataclass
class FeatureDrift:
    """One feature: its reference profile, the live values and their PSI."""

    name: str
    reference: dict[str, Any]
    live: np.ndarray
    psi: float | None

    @property
    def rows(self) -> int:
        """Live values present (not missing)."""
        if self.live.dtype.kind == "f":
            return int(np.isfinite(self.live).sum())
        return sum(v is not None for v in self.live.tolist())

    @property
    def level(self) -> Level:
        return level(self.psi, self.rows)

    @property
    def kind(self) -> str:
        return str(self.reference.get("kind", "?"))

    def shares(self) -> tuple[list[str], list[float], list[float]]:
        """Bin (or category) labels with the reference's and the live data's share of
        rows in each: what a drift chart compares."""
        if self.kind == "numeric" and "edges" in self.reference:
            edges = np.asarray(self.reference["edges"], dtype=np.float64)
            expected = np.asarray(self.reference["counts"], dtype=np.float64)
            x = self.live.astype(np.float64)
            x = x[np.isfinite(x)]
            inner = edges[1:-1]
            actual = np.bincount(np.searchsorted(inner, x, side="right"),
                                 minlength=len(expected)).astype(np.float64)
            return _bin_labels(edges), _share(expected), _share(actual)
        top: dict[str, int] = dict(self.reference.get("top", {}))
        present = self.reference.get("count", 0) - self.reference.get("missing", 0)
        seen: dict[str, int] = {}
        for value in self.live.tolist():
            if value is not None:
                key = category(value)
                seen[key] = seen.get(key, 0) + 1
        labels = [*top, "(other)"]
        expected_c = [*top.values(), max(present - sum(top.values()), 0)]
        actual_c = [seen.get(k, 0) for k in top] + [sum(seen.values()) - sum(
            seen.get(k, 0) for k in top)]
        if not expected_c[-1] and not actual_c[-1]:  # every value is a known one
            labels, expected_c, actual_c = labels[:-1], expected_c[:-1], actual_c[:-1]
        return labels, _share(np.asarray(expected_c, np.float64)), _share(
            np.asarray(actual_c, np.float64))


def live_features(rows: Iterable[Mapping[str, Any]], names: Iterable[str]) -> dict[
        str, np.ndarray]:
    """One array per profiled feature name, from logged input dicts (missing → None)."""
    wanted = list(names)
    columns: dict[str, list[Any]] = {n: [] for n in wanted}
    for row in rows:
        for name in wanted:
            columns[name].append(_value(row, name))
    return {n: _array(v) for n, v in columns.items()}


def drift(profile: Mapping[str, Any], rows: list[Mapping[str, Any]]) -> list[FeatureDrift]:
    """Every profiled feature's drift over the logged `rows`, largest PSI first."""
    references: dict[str, dict[str, Any]] = dict(profile.get("features", {}))
    live = live_features(rows, references)
    result = [FeatureDrift(n, ref, live[n], _psi(ref, live[n]))
              for n, ref in references.items()]
    result.sort(key=lambda f: (f.psi is None, -(f.psi or 0.0), f.name))
    return result


def _psi(reference: dict[str, Any], values: np.ndarray) -> float | None:
    if not len(values):
        return None
    if reference.get("kind") == "numeric" and values.dtype.kind != "f":
        return None  # text logged for a numeric feature: nothing to bin it by
    return psi(reference, values)


def _value(row: Mapping[str, Any], name: str) -> Any:
    if name in row:
        return row[name]
    match = _POSITION.fullmatch(name)
    if match is None:
        return None
    values = row.get(match[1])
    j = int(match[2])
    return values[j] if isinstance(values, list) and j < len(values) else None


def _array(values: list[Any]) -> np.ndarray:
    present = [v for v in values if v is not None]
    if all(isinstance(v, int | float) and not isinstance(v, bool)
                       for v in present):
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.asarray(values, dtype=object)


def _share(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return (counts / total).tolist() if total else [0.0] * len(counts)


def _bin_labels(edges: np.ndarray) -> list[str]:
    inner = [_short(e) for e in edges[1:-1]]
    if not inner:
        return ["all"]
    labels = [f"< {inner[0]}"]
    labels += [f"{a} to {b}" for a, b in itertools.pairwise(inner)]
    labels.append(f"≥ {inner[-1]}")
    return labels


def _short(value: float) -> str:
    return number(value)


def number(value: float) -> str:
    """A number as people write it: 0.0123, 12.3, 1,234, 27.8k, 1.2M."""
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.3g}M"
    if size >= 1e4:
        return f"{value / 1e3:.3g}k"
    if size >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"
