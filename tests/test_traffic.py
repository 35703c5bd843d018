"""Traffic policies in-process: what agreement means, how calls are split, what a
policy accepts, and a shadow queue that drops rather than waits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from modelport.config import load_config
from modelport.errors import ConfigError
from modelport.monitoring.agreement import agreement
from modelport.monitoring.metrics import Metrics
from modelport.traffic import (
    CanaryPolicy,
    ShadowCall,
    ShadowPolicy,
    ShadowRunner,
    Splitter,
    bucket,
)


def test_labels_agree_when_equal() -> None:
    a = {"label": np.array(["cat", "dog", "cat", "eel"], dtype=object)}
    b = {"label": np.array(["cat", "cat", "cat", "eel"], dtype=object)}
    assert agreement(a, b, 0) == (3.0, 4)


def test_numbers_agree_within_the_tolerance() -> None:
    a = {"y": np.array([1.0, 2.0, 3.0])}
    assert agreement(a, {"y": np.array([1.0 + 1e-9, 2.5, 3.0])}, 1e-6) == (2.0, 3)
    assert agreement(a, {"y": np.array([1.05, 2.5, 3.0])}, 0.1) == (2.0, 3)


def test_a_rankers_rows_agree_by_their_share_of_common_ids() -> None:
    a = {"items": np.array([[1, 2, 3, 4], [5, 6, 7, 8]])}
    b = {"items": np.array([[4, 3, 2, 1], [5, 9, 9, 9]])}  # order aside; 1 of 4
    assert agreement(a, b, 0) == (1.25, 2)


def test_probability_rows_agree_when_every_value_does() -> None:
    a = {"p": np.array([[0.2, 0.8], [0.5, 0.5]])}
    b = {"p": np.array([[0.2, 0.8], [0.6, 0.4]])}
    assert agreement(a, b, 1e-6) == (1.0, 2)


def test_answers_of_another_shape_never_agree() -> None:
    a = {"y": np.array([1.0, 2.0])}
    assert agreement(a, {"z": np.array([1.0, 2.0])}, 0) == (0.0, 2)
    assert agreement(a, {"y": np.array([1.0])}, 0) == (0.0, 2)


def test_a_keyless_canary_gets_exactly_its_weight() -> None:
    policy, split = CanaryPolicy(ref="m@candidate", weight=12.5), Splitter()
    picks = [split.to_canary(policy, None) for _ in range(8000)]
    assert sum(picks) == 1000
    assert sum(picks[:8]) == 1  # spread evenly, not in a burst


def test_a_keyed_canary_is_sticky_and_stable_across_processes() -> None:
    policy = CanaryPolicy(ref="m@candidate", weight=10, key="header:x-user")
    split = Splitter()
    first = [split.to_canary(policy, f"u{i}") for i in range(5000)]
    assert first == [Splitter().to_canary(policy, f"u{i}") for i in range(5000)]
    assert 0.085 <= sum(first) / 5000 <= 0.115
    assert bucket("u1") == 325  # a fixed hash, not Python's salted hash()


def test_a_canary_key_is_read_from_a_header_or_the_first_rows_field() -> None:
    by_field = CanaryPolicy(ref="m@c", weight=5, key="field:user")
    assert by_field.key_of({"user": np.array([7, 8])}, None) == "7"
    assert by_field.key_of({"other": np.array([7])}, None) is None
    by_header = CanaryPolicy(ref="m@c", weight=5, key="header:x-user")
    assert by_header.key_of({}, {"x-user": "ann"}) == "ann"
    assert by_header.key_of({}, None) is None


@pytest.mark.parametrize(("yaml", "error"), [
    ("shadow: m@", "models.0.shadow.ref: Value error, invalid alias ''"),
    ("canary: {ref: m@c, weight: 0}", "models.0.canary.weight: Input should be greater than 0"),
    ("canary: {ref: m@c, weight: 5, key: user}",
     "models.0.canary.key: Value error, key 'user': expected 'header:NAME' or 'field:NAME'"),
    ("shadow: {ref: m@s, fraction: 2}", "models.0.shadow.fraction: Input should be less"),
    ("canary: {ref: m@c, wieght: 5}", "models.0.canary.weight: Field required"),
])
def test_a_bad_policy_is_refused_at_start_naming_the_key(
        tmp_path: Path, yaml: str, error: str) -> None:
    path = tmp_path / "modelport.yaml"
    path.write_text(f"models:\n  - ref: m@production\n    {yaml}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert error in caught.value.message
    assert "\n" not in caught.value.message


def test_a_policy_reads_in_short_and_long_form(tmp_path: Path) -> None:
    path = tmp_path / "modelport.yaml"
    path.write_text("models:\n  - ref: m@production\n    shadow: m@staging\n"
                    "    canary: {ref: 'm:3', weight: 10, key: 'header:x-user'}\n")
    model = load_config(path, {}).models[0]
    assert model.traffic.shadow == ShadowPolicy(ref="m@staging")
    assert model.traffic.refs == ["m@staging", "m:3"]


def test_a_full_shadow_queue_drops_and_counts_instead_of_waiting() -> None:
    metrics = Metrics()

    async def main() -> None:
        runner = ShadowRunner(metrics, queue_size=2, tasks=0)  # nobody empties it
        runner.start()
        call = ShadowCall("m", ShadowPolicy(ref="m@s"), None,  # type: ignore[arg-type]
                          {}, {}, "predict", None, None)
        for _ in range(5):
            runner.offer(call)
        assert runner.waiting == 2
        await runner.stop()

    asyncio.run(main())
    assert metrics.registry.get_sample_value(
        "modelport_shadow_calls_total",
        {"model": "m", "shadow": "m@s", "outcome": "dropped"}) == 3
