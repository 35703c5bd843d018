"""The guard and gate expressions, and which bounds the guard judges when."""

from __future__ import annotations

import pytest

from modelport.errors import InvalidInput
from modelport.promotion import METRICS, parse_duration, parse_gate, parse_guard


def test_guard_bounds_read_percentages_and_every_operator() -> None:
    bounds = parse_guard(" error_rate < 1% , p99_ms<=50,requests>=100,p50_ms>0.5",
                         set(METRICS))
    assert [(b.metric, b.op, b.value) for b in bounds] == [
        ("error_rate", "<", 0.01), ("p99_ms", "<=", 50.0), ("requests", ">=", 100.0),
        ("p50_ms", ">", 0.5)]
    assert str(bounds[0]) == "error_rate<1%" and bounds[0].holds(0.009)
    assert not bounds[0].holds(0.01) and bounds[2].lower and not bounds[0].lower


@pytest.mark.parametrize("text", ["", "error_rate", "error_rate=1", "error_rate<",
                                  "error_rate<1%,", "<1"])
def test_a_malformed_guard_names_the_piece(text: str) -> None:
    with pytest.raises(InvalidInput, match="guard"):
        parse_guard(text, set(METRICS))


def test_gates_compare_with_production_a_margin_or_a_number() -> None:
    assert str(parse_gate("auc>=production")) == "auc>=production"
    margin = parse_gate("mae <= production - 0.5")
    assert margin.bar(3.0) == 2.5 and margin.wins(2.5, 2.5) and not margin.wins(2.6, 2.5)
    assert parse_gate("auc>0.9").value == 0.9
    with pytest.raises(InvalidInput, match="is not METRIC>=production"):
        parse_gate("auc>=staging")


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90s", "10m", "1h", "500ms", "3", 2.5)] == [
        90, 600, 3600, 0.5, 3, 2.5]
    for bad in ("0s", "soon", "-1m"):
        with pytest.raises(InvalidInput, match="window"):
            parse_duration(bad)
