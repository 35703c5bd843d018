"""Implicit-feedback ALS (the `implicit` library) and a popularity baseline, both as
`FactorModel`s: the artifact the registry stores and the service folds users into.

Confidence convention. The factors flavor folds a user in with the confidence of
Hu, Koren & Volinsky: an item heard c times weighs 1 + alpha * c. `implicit` (since
0.5) takes the matrix values as the confidence itself and multiplies them by its own
`alpha`. To train with exactly the confidence the service folds in with, the trainer
hands `implicit` the values 1 + alpha * c and sets implicit's alpha to 1. (A test
checks that the flavor's fold-in equals implicit's own `recalculate_user`.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
from modelport.flavors import FactorModel
from scipy import sparse
from threadpoolctl import threadpool_limits

TOP_K = 50  # items per answer; the service slices the k it was asked for


@dataclass(frozen=True)
class AlsParams:
    """The parameters that matter; the defaults are implicit's own."""

    factors: int = 100
    regularization: float = 0.01
    alpha: float = 1.0
    iterations: int = 15

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def with_value(self, axis: str, value: float) -> AlsParams:
        """A copy with one parameter changed (factors and iterations are integers)."""
        if axis == "factors":
            return replace(self, factors=int(value))
        if axis == "iterations":
            return replace(self, iterations=int(value))
        if axis == "regularization":
            return replace(self, regularization=float(value))
        if axis == "alpha":
            return replace(self, alpha=float(value))
        raise ValueError(f"unknown ALS parameter {axis!r}: use factors, regularization, "
                         "alpha or iterations")

    def __str__(self) -> str:
        return (f"factors={self.factors} regularization={self.regularization:g} "
                f"alpha={self.alpha:g} iterations={self.iterations}")


# The values tried for each parameter, searched one axis at a time (see
# music.train.tune). Regularization and alpha move the results most on implicit data;
# factors and iterations trade accuracy for training time.
GRID: dict[str, list[float | int]] = {
    "factors": [16, 32, 64, 128],
    "regularization": [0.01, 0.1, 1.0, 10.0, 50.0],
    "alpha": [0.5, 1.0, 5.0, 20.0, 40.0],
    "iterations": [10, 15, 30],
}


@dataclass
class Matrix:
    """Summed event weights, users x items, with the ids of rows and columns."""

    counts: sparse.csr_matrix
    users: pd.Index
    items: pd.Index

    @property
    def popularity(self) -> np.ndarray:
        """Events per item (summed weights)."""
        return np.asarray(self.counts.sum(axis=0)).ravel()

    @property
    def reach(self) -> np.ndarray:
        """The share of users who played each item: a new listener's scores.

        The model scores a known listener's items by predicted preference, fitted to 1
        for what they played and 0 for the rest; for a listener it knows nothing about,
        the best estimate on that scale is the share of listeners who played the item.
        So `score` means the same for warm and cold answers (README, "What a score
        means"); a raw play count here was 9493.0 beside a warm user's 0.9.
        """
        users = max(self.counts.shape[0], 1)
        played: np.ndarray = np.asarray((self.counts > 0).sum(axis=0), dtype=np.float64)
        share: np.ndarray = played.ravel() / users
        return share


def interaction_matrix(frame: pd.DataFrame, items: Iterable[str] | None = None) -> Matrix:
    """Sum the events of each (user, item). `items` fixes the columns (a catalogue);
    events on items outside it are dropped."""
    user_codes, users = pd.factorize(frame["user"].astype(str), sort=True)
    if items is None:
        item_codes, item_index = pd.factorize(frame["item"].astype(str), sort=True)
        keep = np.ones(len(frame), dtype=bool)
        item_ids = pd.Index(item_index)
    else:
        item_ids = pd.Index(list(dict.fromkeys(items)))  # a catalogue may repeat an id
        item_codes = item_ids.get_indexer(frame["item"].astype(str))
        keep = item_codes >= 0
    counts = sparse.coo_matrix(
        (frame["weight"].to_numpy(np.float32)[keep], (user_codes[keep], item_codes[keep])),
        shape=(len(users), len(item_ids))).tocsr()
    counts.sum_duplicates()
    return Matrix(counts, pd.Index(users), item_ids)


def fit_als(matrix: Matrix, params: AlsParams, *, seed: int = 0,
            threads: int = 0) -> FactorModel:
    """Train ALS on the matrix and keep the item side as a FactorModel."""
    # imported here: implicit loads its compiled solvers, which only training needs
    from implicit.cpu.als import AlternatingLeastSquares

    confidence = matrix.counts.copy().astype(np.float32)
    confidence.data = 1.0 + params.alpha * confidence.data  # see the module docstring
    # implicit parallelizes over users itself; a multithreaded BLAS underneath it
    # oversubscribes the cores (implicit warns, and runs several times slower)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors, regularization=params.regularization, alpha=1.0,
            iterations=params.iterations, random_state=seed, num_threads=threads)
        model.fit(confidence, show_progress=False)
    return FactorModel(
        item_factors=np.asarray(model.item_factors), item_ids=list(matrix.items),
        popularity=matrix.reach, regularization=params.regularization,
        alpha=params.alpha, top_k=TOP_K)


def popularity_model(matrix: Matrix) -> FactorModel:
    """The most-played items the user has not heard, as a one-factor FactorModel.

    Each item's single factor is its share of the events, so any history folds in to
    a positive user factor and the scores rank items by popularity. The baseline thus
    runs the very path the ALS model runs (same history, same exclusion of heard items,
    same cold start), which is what makes the comparison fair.
    """
    popularity = matrix.popularity
    share = popularity / max(float(popularity.max()), 1e-12)
    return FactorModel(item_factors=share[:, None], item_ids=list(matrix.items),
                       popularity=matrix.reach, regularization=0.01, alpha=1.0, top_k=TOP_K)
