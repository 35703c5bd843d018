"""The factors flavor: a recommender as arrays, users folded in from their history."""

from __future__ import annotations

import numpy as np

from modelport import Registry, Settings
from modelport.flavors.factors import SAMPLE, FactorModel, top_indices


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


def test_top_indices_is_a_full_sort_cut_to_k() -> None:
    rng = np.random.default_rng(0)
    for n, k in [(20_000, 50), (20_000, 10), (5_000, 50), (300, 50), (40, 50), (1, 1)]:
        for scores in (rng.standard_normal(n).astype(np.float32),
                       rng.integers(0, 5, n).astype(np.float32),  # ties everywhere
                       np.sort(rng.standard_normal(n))):  # a sample skewed by the order
            scores[rng.choice(n, n // 3, replace=False)] = -np.inf
            expected = np.argsort(-scores, kind="stable")[:k]
            assert top_indices(scores, k).tolist() == expected.tolist()
    # the highest scores exactly where the sample looks: too few pass its threshold
    scores = np.zeros(20_000, dtype=np.float32)
    scores[:: 20_000 // SAMPLE][:20] = np.arange(20, 0, -1)
    assert top_indices(scores, 50).tolist() == np.argsort(-scores, kind="stable")[:50].tolist()


def test_a_batch_answers_as_its_rows_one_by_one() -> None:
    rng = np.random.default_rng(1)
    ids = [f"i{i}" for i in range(2_000)]
    model = FactorModel(rng.standard_normal((2_000, 8)), ids, rng.integers(0, 100, 2_000),
                        top_k=20)
    histories = np.full((16, 30), "", dtype=object)
    for row in range(16):
        heard = rng.choice(ids, rng.integers(0, 30))  # some empty: cold rows in the batch
        histories[row, : len(heard)] = heard
    together = model.recommend(histories)
    for row in range(16):
        alone = model.recommend(histories[row: row + 1])
        assert together["items"][row].tolist() == alone["items"][0].tolist()
        np.testing.assert_allclose(together["scores"][row], alone["scores"][0], rtol=1e-5)
        assert together["cold"][row] == alone["cold"][0]


def test_a_history_of_almost_everything_leaves_fewer_than_k() -> None:
    out = two_taste_model().recommend(np.array(
        [["r0", "r1", "r2", "r3", "r4", "j0", "j1", "j2"]], dtype=object))
    assert out["items"][0].tolist() == ["j3", "j4", ""]  # never a heard item as padding
    assert out["scores"][0][2] == 0
