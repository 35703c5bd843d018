"""Drift scores by kind of input, from logged rows as the prediction log stores them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from modelport.monitoring.drift import drift
from modelport.profile import profile
from modelport.signature import infer_signature


def test_each_position_of_a_numeric_tensor_is_a_feature() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(1000, 3))
    prof = profile({"input": train}, infer_signature(train[:2]))
    live = rng.normal(size=(300, 3))
    live[:, 1] += 3
    found = {f.name: f for f in drift(prof, [{"input": r} for r in live.tolist()])}
    assert set(found) == {"input[0]", "input[1]", "input[2]"}
    assert found["input[1]"].level == "drift" and found["input[0]"].level == "stable"
    assert found["input[1]"].rows == 300


def test_an_identifier_is_not_scored_and_booleans_are_categories() -> None:
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"customer": [f"c{i}" for i in range(1000)],
                          "member": rng.random(1000) < 0.3})
    sig = infer_signature(train[:2])
    prof = profile(sig.decode(train), sig)
    rows = [{"customer": f"new{i}", "member": True} for i in range(200)]
    found = {f.name: f for f in drift(prof, rows)}
    assert found["customer"].level == "identifier" and found["customer"].score is None
    assert found["member"].kind == "categorical" and found["member"].level == "drift"
