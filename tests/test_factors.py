"""The factors flavor: a recommender as arrays, users folded in from their history."""

from __future__ import annotations

import numpy as np

from modelport import Registry, Settings
from modelport.flavors.factors import FactorModel


def two_taste_model() -> FactorModel:
    # items 0-4 are "rock", 5-9 "jazz"; factor 0 = rock, factor 1 = jazz
    factors = np.zeros((10, 2), dtype=np.float32)
    factors[:5, 0] = np.linspace(1.0, 0.6, 5)
    factors[5:, 1] = np.linspace(1.0, 0.6, 5)
    ids = [f"r{i}" for i in range(5)] + [f"j{i}" for i in range(5)]
    popularity = np.arange(10, 0, -1)  # r0 is the most popular
    return FactorModel(factors, ids, popularity, regularization=0.1, top_k=3)


def test_history_steers_the_answer_and_excludes_what_was_heard(settings: Settings) -> None:
    with Registry(settings=settings) as reg:
        sample = {"history": np.array([["j0", "j1", ""], ["", "", ""]], dtype=object)}
        mv = reg.register("recs", two_taste_model(), sample_input=sample)
        assert mv.flavor == "factors"
        model = reg.load("recs:1")
        out = model.predict_batch({"history": np.array(
            [["j0", "j1", ""], ["r0", "", ""], ["", "", ""], ["nope", "", ""]], dtype=object)})
    assert out["items"][0].tolist() == ["j2", "j3", "j4"]  # jazz fan: more jazz, none heard
    assert out["items"][1].tolist() == ["r1", "r2", "r3"]
    assert out["cold"].tolist() == [False, False, True, True]
    assert out["items"][2].tolist() == ["r0", "r1", "r2"]  # cold: the most popular
    assert (np.diff(out["scores"][0]) <= 0).all()


def test_artifact_holds_no_pickle(settings: Settings) -> None:
    with Registry(settings=settings) as reg:
        mv = reg.register("recs", two_taste_model(),
                          sample_input={"history": np.array([["r0", ""]], dtype=object)})
        path = reg.artifacts.fetch(mv.sha256, reg.cache_dir)
    names = sorted(p.name for p in path.iterdir())
    assert names == ["item_factors.npy", "items.json", "popularity.npy"]
    np.load(path / "item_factors.npy", allow_pickle=False)  # raises if it held objects
