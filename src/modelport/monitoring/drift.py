"""Drift of logged inputs against the profile stored with their model version.

The prediction log keeps each sampled row's inputs as JSON; here they become one array
per profiled feature (a numeric tensor's `name[j]` is position j of `name`) and each is
scored by the distance that fits its kind:

- numeric and categorical: the population stability index (`profile.psi`), over the
  reference's bins, or its most frequent categories plus "other";
- an identifier (a categorical feature whose values are mostly distinct, a user id):
  not scored, as its distribution says nothing about the model's inputs;
- set-valued (a list of ids per row, `profile.is_set`): two scores, the PSI of its
  size and the Jensen-Shannon distance of its values' frequencies
  (`profile.set_distance`); its positions are never scored one by one. A profile
  written before sets were profiled as such (one categorical feature per position)
  is pooled the same way: one distance over every (position, value) bucket.

No score is flagged when fewer than `MIN_ROWS` rows carry the feature: a PSI from one
row (8.31 once headlined a report) is sampling noise, not drift.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from modelport.profile import TOP_VALUES, category, js_distance, psi, set_distance, set_items

SHIFT = 0.1
"""PSI above this: the feature moved enough to look at."""
DRIFT = 0.25
"""PSI above this: a significant drift."""
SHIFT_JS, DRIFT_JS = 0.13, 0.21
"""The same for a Jensen-Shannon distance: for a small change, these are the distances
at which PSI reads 0.1 and 0.25 (JS divergence ≈ PSI / 8 nats)."""
MIN_ROWS = 100
"""Fewer live rows than this flag nothing: sampling noise alone gives a PSI of about
(bins - 1) / rows, 0.3 for 30 rows over 10 bins, which would read as drift."""
MIN_VALUES = 1000
"""Nor fewer values of a set-valued feature: over its 51 buckets, sampling noise alone
gives a JS distance of about 0.1 from 1,000 values, 0.13 (a shift) from 500."""
ID_SHARE = 0.5
"""A categorical feature with more distinct values than this share of its reference
rows (and more than it keeps counts of) is an identifier and is not scored."""

Level = Literal["stable", "shift", "drift", "few rows", "identifier", "n/a"]
Method = Literal["psi", "js"]
LEVELS: dict[str, int] = {"stable": 0, "shift": 1, "drift": 2}
"""Levels as the `modelport_drift_level` gauge reports them."""
_POSITION = re.compile(r"(.+)\[(\d+)\]")
_OTHER = "\x00other"  # never a logged value's key


def level(value: float | None, rows: int = MIN_ROWS, method: Method = "psi",
          values: int | None = None) -> Level:
    if value is None:
        return "n/a"
    if rows < MIN_ROWS or (values is not None and values < MIN_VALUES):
        return "few rows"
    shift, drift_ = (SHIFT, DRIFT) if method == "psi" else (SHIFT_JS, DRIFT_JS)
    return "drift" if value > drift_ else "shift" if value > shift else "stable"


@dataclass
class FeatureDrift:
    """One feature: its reference profile, the live values and their distance.

    `live` is one value per row, except for a set's values (`kind` "set"): every
    value of every row, as `shares()` counts them."""

    name: str
    reference: dict[str, Any]
    live: np.ndarray
    score: float | None
    rows: int
    """Live rows that carry the feature (not missing)."""
    method: Method = "psi"
    identifier: bool = False
    values: int | None = None
    """A set's values counted (what its distance's noise depends on)."""

    @property
    def psi(self) -> float | None:
        """The score when it is a PSI."""
        return self.score if self.method == "psi" else None

    @property
    def level(self) -> Level:
        if self.identifier:
            return "identifier"
        return level(self.score, self.rows, self.method, self.values)

    @property
    def flagged(self) -> bool:
        return self.level in ("shift", "drift")

    @property
    def headline(self) -> float | None:
        """The score when there are rows enough to believe it, else None."""
        enough = self.rows >= MIN_ROWS and (self.values or MIN_VALUES) >= MIN_VALUES
        return self.score if enough and not self.identifier else None

    @property
    def kind(self) -> str:
        return str(self.reference.get("kind", "?"))

    def shares(self) -> tuple[list[str], list[float], list[float]]:
        """Bin (or category) labels with the reference's and the live data's share of
        rows (a set: of values) in each: what a drift chart compares."""
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
        if self.kind == "set":
            present = self.reference.get("items", 0)
        else:
            present = self.reference.get("count", 0) - self.reference.get("missing", 0)
        seen = Counter(category(v) for v in self.live.tolist() if v is not None)
        labels = [*top, "(other)"]
        expected_c = [*top.values(), max(present - sum(top.values()), 0)]
        actual_c = [seen[k] for k in top] + [seen.total() - sum(seen[k] for k in top)]
        if not expected_c[-1] and not actual_c[-1]:  # every value is a known one
            labels, expected_c, actual_c = labels[:-1], expected_c[:-1], actual_c[:-1]
        return labels, _share(np.asarray(expected_c, np.float64)), _share(
            np.asarray(actual_c, np.float64))


def live_features(rows: Iterable[Mapping[str, Any]], names: Iterable[str]) -> dict[
        str, np.ndarray]:
    """One array per profiled feature name, from logged input dicts (missing → None)."""
    rows = list(rows)
    columns: dict[str, list[Any]] = {}
    for name in names:  # a column at a time: the live watch reads thousands of rows
        column = [row.get(name) for row in rows]
        if _POSITION.fullmatch(name) and all(v is None for v in column):
            column = [_value(row, name) for row in rows]
        columns[name] = column
    return {n: _array(v) for n, v in columns.items()}


def drift(profile: Mapping[str, Any], rows: list[Mapping[str, Any]]) -> list[FeatureDrift]:
    """Every profiled feature's drift over the logged `rows`, largest score first
    (scores that may be believed before those from too few rows)."""
    references: dict[str, dict[str, Any]] = dict(profile.get("features", {}))
    pooled = _positional_sets(references)
    in_pool = {n for names in pooled.values() for n in names}
    plain = {n: r for n, r in references.items() if n not in in_pool}
    live = live_features(rows, plain)
    result: list[FeatureDrift] = []
    for name, ref in plain.items():
        if ref.get("kind") == "set":
            result += _set_drift(name, ref, live[name])
        else:
            result.append(_scalar_drift(name, ref, live[name]))
    for name, positions in pooled.items():
        result.append(_pooled_drift(name, [references[p] for p in positions],
                                    live_features(rows, positions)))
    result.sort(key=lambda f: (f.score is None, f.headline is None,
                               -(f.score or 0.0), f.name))
    return result


def _scalar_drift(name: str, ref: dict[str, Any], values: np.ndarray) -> FeatureDrift:
    rows = _present(values)
    if _is_identifier(ref):
        return FeatureDrift(name, ref, values, None, rows, identifier=True)
    return FeatureDrift(name, ref, values, _psi(ref, values), rows)


def _set_drift(name: str, ref: dict[str, Any], values: np.ndarray) -> list[FeatureDrift]:
    logged = [v for v in values.tolist() if isinstance(v, list | tuple)]
    sizes, items = set_items(logged)
    flat = np.asarray(list(items.elements()), dtype=object)
    size_ref = dict(ref.get("size", {}))
    return [FeatureDrift(f"{name} (size)", size_ref, sizes,
                         psi(size_ref, sizes) if logged else None, len(logged)),
            FeatureDrift(f"{name} (values)", ref, flat, set_distance(ref, items),
                         len(logged), method="js", values=items.total())]


def _pooled_drift(name: str, refs: list[dict[str, Any]],
                  live: dict[str, np.ndarray]) -> FeatureDrift:
    """One distance for the positions of a list profiled one by one (older profiles):
    value counts summed over the positions, a value counted at a position only where
    it is among that position's reference top values (else "other"), live as in the
    reference. Per (position, value) bucket, the noise of a thousand buckets alone
    would read as a shift."""
    expected: Counter[str] = Counter()
    actual: Counter[str] = Counter()
    rows = 0
    for ref, values in zip(refs, live.values(), strict=True):
        top: dict[str, int] = ref.get("top", {})
        seen = Counter(category(v) for v in values.tolist() if v is not None)
        present = ref.get("count", 0) - ref.get("missing", 0)
        expected.update(top)
        expected[_OTHER] += max(present - sum(top.values()), 0)
        actual.update({k: seen[k] for k in top})
        actual[_OTHER] += seen.total() - sum(seen[k] for k in top)
        rows = max(rows, seen.total())
    keys = list(expected)
    score = js_distance(np.asarray([expected[k] for k in keys], np.float64),
                        np.asarray([actual[k] for k in keys], np.float64))
    reference = {"kind": "positions", "positions": len(refs)}
    return FeatureDrift(f"{name} (positions)", reference, np.asarray([], dtype=object),
                        score, rows, method="js", values=actual.total())


def _positional_sets(references: Mapping[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Inputs profiled as one categorical feature per position (`name[j]`)."""
    groups: dict[str, list[str]] = {}
    for name, ref in references.items():
        match = _POSITION.fullmatch(name)
        if match is not None and ref.get("kind") == "categorical":
            groups.setdefault(match[1], []).append(name)
    return {n: names for n, names in groups.items() if len(names) > 1}


def _is_identifier(ref: Mapping[str, Any]) -> bool:
    if ref.get("kind") != "categorical":
        return False
    present = ref.get("count", 0) - ref.get("missing", 0)
    distinct = ref.get("distinct", 0)
    return bool(distinct > TOP_VALUES and distinct > ID_SHARE * present)


def _psi(reference: dict[str, Any], values: np.ndarray) -> float | None:
    if not len(values):
        return None
    if reference.get("kind") == "numeric" and values.dtype.kind != "f":
        return None  # text logged for a numeric feature: nothing to bin it by
    return psi(reference, values)


def _present(values: np.ndarray) -> int:
    if values.dtype.kind == "f":
        return int(np.isfinite(values).sum())
    return sum(v is not None for v in values.tolist())


def _value(row: Mapping[str, Any], name: str) -> Any:
    if name in row:
        return row[name]
    match = _POSITION.fullmatch(name)
    if match is None:
        return None
    values = row.get(match[1])
    j = int(match[2])
    return values[j] if isinstance(values, list) and j < len(values) else None


_NUMBERS = {int, float, type(None)}


def _array(values: list[Any]) -> np.ndarray:
    if set(map(type, values)) <= _NUMBERS:  # numbers (not bools), None → NaN
        return np.asarray(values, dtype=np.float64)
    out = np.empty(len(values), dtype=object)  # lists stay one object per row
    out[:] = values
    return out


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
