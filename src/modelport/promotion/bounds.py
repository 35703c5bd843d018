"""The small languages of promotion: guard bounds, gate comparisons and durations.

A guard is bounds separated by commas, each `METRIC OP NUMBER[%]`:
`error_rate<1%,p99_ms<50,requests>=100` (`%` divides by 100). A gate compares one
registered metric with production's: `auc>=production`, `mae<=production`,
`auc>production+0.01` (a margin), or with a number: `auc>=0.9`. A window is a duration:
`90s`, `10m`, `1h`, or plain seconds.

Parse errors are `InvalidInput` naming the piece that is wrong, in one line.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from modelport.errors import InvalidInput

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_BOUND = re.compile(r"\s*([A-Za-z][A-Za-z0-9_@.-]*)\s*(<=|>=|<|>)\s*"
                    r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*(%?)\s*")
_GATE = re.compile(r"\s*([A-Za-z][A-Za-z0-9_@.-]*)\s*(<=|>=|<|>)\s*(?:(production)\s*"
                   r"(?:([-+])\s*(\d+(?:\.\d+)?))?|([-+]?\d+(?:\.\d+)?))\s*")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


@dataclass(frozen=True)
class Bound:
    """One guard bound: the metric must stay `op value`."""

    metric: str
    op: str
    value: float
    percent: bool = False

    def holds(self, observed: float) -> bool:
        return OPS[self.op](observed, self.value)

    @property
    def lower(self) -> bool:
        """A floor (`>`, `>=`): on a count that only grows, judged at the window's end."""
        return self.op.startswith(">")

    def show(self, value: float) -> str:
        return f"{value * 100:.4g}%" if self.percent else f"{value:.4g}"

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.show(self.value)}"


def parse_guard(text: str, known: set[str] | frozenset[str]) -> list[Bound]:
    """`error_rate<1%,p99_ms<50` → bounds; every metric must be one of `known`."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("the guard is empty: give bounds such as 'error_rate<1%,p99_ms<50'")
    bounds = []
    for piece in text.split(","):
        found = _BOUND.fullmatch(piece)
        if found is None:
            raise InvalidInput(f"guard bound {piece.strip()!r} is not METRIC<VALUE, "
                               "METRIC>=VALUE (…), e.g. 'error_rate<1%' or 'p99_ms<50'")
        metric, op, number, percent = found.groups()
        if metric not in known:
            raise InvalidInput(f"guard bound {piece.strip()!r}: no live metric {metric!r}; "
                               f"known: {', '.join(sorted(known))}")
        value = float(number) / (100 if percent else 1)
        bounds.append(Bound(metric, op, value, bool(percent)))
    return bounds


@dataclass(frozen=True)
class Comparison:
    """A gate: `metric op production (+ margin)`, or `metric op value`."""

    metric: str
    op: str
    margin: float = 0.0
    value: float | None = None
    """A fixed bar instead of production's metric."""

    def bar(self, production: float) -> float:
        return production + self.margin

    def wins(self, candidate: float, bar: float) -> bool:
        return OPS[self.op](candidate, bar)

    def __str__(self) -> str:
        if self.value is not None:
            return f"{self.metric}{self.op}{self.value:g}"
        margin = f"{self.margin:+g}" if self.margin else ""
        return f"{self.metric}{self.op}production{margin}"


def parse_gate(text: str) -> Comparison:
    """`auc>=production`, `mae<=production-0.5`, `auc>=0.9` → a comparison."""
    found = _GATE.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        raise InvalidInput(f"gate {text!r} is not METRIC>=production (or <=, >, <, with "
                           "an optional +MARGIN, or a number), e.g. 'auc>=production'")
    metric, op, production, sign, margin, number = found.groups()
    if production is None:
        return Comparison(metric, op, value=float(number))
    return Comparison(metric, op, margin=float(margin or 0) * (-1 if sign == "-" else 1))


def parse_duration(text: str | float, what: str = "window") -> float:
    """`90s`, `10m`, `1h`, `2d`, `500ms` or a number of seconds → seconds (> 0)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        found = _DURATION.fullmatch(str(text))
        if found is None:
            raise InvalidInput(f"{what} {text!r} is not a duration such as 90s, 10m or 1h")
        seconds = float(found[1]) * _SECONDS[found[2]]
    if seconds <= 0:
        raise InvalidInput(f"{what} {text!r} must be longer than 0 seconds")
    return seconds
