"""Promotion: gate a candidate, move the alias, guard the new version, roll back on a
breach. See docs/promotion.md."""

from __future__ import annotations

from modelport.promotion.bounds import Bound, Comparison, parse_duration, parse_gate, parse_guard
from modelport.promotion.gate import Decided, Evaluate, Gate, MetricGate, Verdict
from modelport.promotion.guard import Guard, GuardResult
from modelport.promotion.live import METRICS, LiveMetric, LiveWindow, register_metric
from modelport.promotion.promote import Promotion, production_of, promote

__all__ = [
    "METRICS",
    "Bound",
    "Comparison",
    "Decided",
    "Evaluate",
    "Gate",
    "Guard",
    "GuardResult",
    "LiveMetric",
    "LiveWindow",
    "MetricGate",
    "Promotion",
    "Verdict",
    "parse_duration",
    "parse_gate",
    "parse_guard",
    "production_of",
    "promote",
    "register_metric",
]
