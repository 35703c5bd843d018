"""Gates: whether a candidate version may replace production.

A gate is any callable `(registry, candidate, production) -> Verdict`; `production`
is None when the alias points nowhere yet. `MetricGate` is the common one: a
comparison such as `auc>=production` on the versions' registered metrics or, given an
`evaluate` function (the user's hold-out), on both versions scored by it, so that
both face the same rows. A project with its own evidence (the music example pairs
per-user scores and bootstraps an interval) writes its own gate and hands it to the
same promotion and retraining code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from modelport.errors import InvalidInput
from modelport.promotion.bounds import Comparison, parse_gate
from modelport.registry import ModelVersion, Registry

Evaluate = Callable[[ModelVersion], Mapping[str, float]]
"""Score one version on the user's hold-out: metric name → value."""
VerdictWord = Literal["promote", "refuse", "undecided"]


@dataclass
class Verdict:
    word: VerdictWord
    """`promote`, `refuse`, or `undecided` (too little evidence: production stays)."""
    reason: str
    candidate: float | None = None
    bar: float | None = None

    @property
    def passed(self) -> bool:
        return self.word == "promote"


class Gate(Protocol):
    def __call__(self, registry: Registry, candidate: ModelVersion,
                 production: ModelVersion | None) -> Verdict: ...


class MetricGate:
    """`metric op production(+margin)` or `metric op number`, on registered metrics or on
    `evaluate`'s scores of both versions."""

    def __init__(self, comparison: str | Comparison, evaluate: Evaluate | None = None) -> None:
        self.comparison = parse_gate(comparison) if isinstance(comparison, str) else comparison
        self.evaluate = evaluate

    def __str__(self) -> str:
        return str(self.comparison)

    def __call__(self, registry: Registry, candidate: ModelVersion,
                 production: ModelVersion | None) -> Verdict:
        c = self.comparison
        where = "on the hold-out" if self.evaluate else "as registered"
        mine = self._value(candidate, required=True)
        assert mine is not None
        if c.value is not None:
            bar, against = c.value, f"{c.value:g}"
        elif production is None:
            return Verdict("promote", f"{c.metric} {mine:.4g} {where}: no production "
                                      "version to compare with", mine)
        elif production.version == candidate.version:
            return Verdict("promote", f"v{candidate.version} is production already", mine)
        else:
            theirs = self._value(production, required=False)
            if theirs is None:
                return Verdict("promote", f"{c.metric} {mine:.4g} {where}; production "
                                          f"v{production.version} has no {c.metric}", mine)
            bar = c.bar(theirs)
            against = f"production v{production.version} {theirs:.4g}" + (
                f" {c.margin:+g}" if c.margin else "")
        won = c.wins(mine, bar)
        sign = c.op if won else {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}[c.op]
        return Verdict("promote" if won else "refuse",
                       f"{c.metric} {mine:.4g} {sign} {against} {where} (gate {c})", mine, bar)

    def _value(self, version: ModelVersion, *, required: bool) -> float | None:
        metric = self.comparison.metric
        values = self.evaluate(version) if self.evaluate else version.metrics
        value = values.get(metric)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            if not required:
                return None
            raise InvalidInput(f"{version.ref} has no numeric metric {metric!r} "
                               f"({'from evaluate' if self.evaluate else 'registered'}: "
                               f"{', '.join(sorted(values)) or 'none'})")
        return float(value)


class Decided:
    """A verdict the trainer reached on its own evidence (and perhaps recorded on the
    version it registered): promotion takes it as it is."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict

    def __call__(self, registry: Registry, candidate: ModelVersion,
                 production: ModelVersion | None) -> Verdict:
        return self.verdict
