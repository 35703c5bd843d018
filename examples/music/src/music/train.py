"""The trainer: split by time, fit ALS and the popularity baseline, evaluate both the
way the service answers, optionally tune ALS on a validation split first.

The default split holds out the last 20% of each user's events (a per-user temporal
hold-out): a global time cut on data where users come and go leaves few users on both
sides of it (12 on one public data set of 100k events), and a metric on 12 users says
nothing. Every metric is recorded with its users and a bootstrap interval; below
`min_eval_users` the trainer says so, and the gate (`music.gate`) will not decide on it.

Tuning never looks at the test window: the training part is split again by the same
rule (the last days or share of it become the validation window), every grid point is
fitted on what precedes that window and scored on it, and the winner is refitted on
the whole training part before the one evaluation on the test window.

Registering and the promotion gate are in `music.gate`; this module only computes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from modelport.flavors import FactorModel

from music.als import GRID, AlsParams, Matrix, fit_als, interaction_matrix
from music.als import popularity_model as fit_popularity
from music.metrics import Scores, evaluate, score_users
from music.split import HoldOut, Split, hold_out, recent_histories, time_split
from music.taste import favourite_genres, genre_share

Progress = Callable[[str], None]


@dataclass
class TrainConfig:
    name: str = "music-recommender"
    """The registry name; the baseline is registered as `<name>-popularity`."""
    dataset: str = "interactions"
    """Recorded as a tag: where the events came from."""
    test_days: float | None = None
    """Hold out the last days (a global cut); None for the last `test_fraction`."""
    test_fraction: float = 0.2
    per_user: bool = True
    """The last `test_fraction` of each user's events (the default), or of all events;
    `test_days` (a global cut) overrides it."""
    min_eval_users: int = 100
    """Fewer evaluation users than this: too noisy to decide a promotion on."""
    history_length: int = 50
    """H: the history the service sends (and evaluation uses), most recent first."""
    params: AlsParams | None = None
    """Fixed ALS parameters; None to tune on `grid`."""
    grid: dict[str, list[float | int]] = field(default_factory=lambda: dict(GRID))
    max_eval_users: int | None = None
    """Sample the test users (seeded) to bound evaluation time; None for all."""
    max_tune_users: int | None = 2000
    tune_rounds: int = 2
    k: int = 10
    seed: int = 0

    def split(self, frame: pd.DataFrame) -> Split:
        return time_split(frame, days=self.test_days, fraction=self.test_fraction,
                          per_user=self.per_user and self.test_days is None)


@dataclass
class Trial:
    params: AlsParams
    metrics: dict[str, float]
    seconds: float


@dataclass
class Candidate:
    """A fitted model with its hold-out numbers."""

    label: str
    model: FactorModel
    metrics: dict[str, float]
    train_seconds: float
    """Wall-clock time of the fit."""
    params: dict[str, float | int] = field(default_factory=dict)
    train_cpu_seconds: float = 0.0
    """CPU time of the fit, all threads: steadier than wall time on a shared machine."""
    scores: Scores | None = None
    """Per-user scores on the hold-out, in its order: what the gate pairs."""


@dataclass
class TrainResult:
    split: Split
    holdout: HoldOut
    catalog_size: int
    baseline: Candidate
    als: Candidate
    trials: list[Trial] = field(default_factory=list)
    dropped_off_catalog: int = 0
    """Training events on items outside the given catalogue."""
    min_eval_users: int = 100

    @property
    def too_few_users(self) -> bool:
        """Too few evaluation users to decide a promotion on (see `TrainConfig`)."""
        return len(self.holdout.users) < self.min_eval_users


def train(frame: pd.DataFrame, config: TrainConfig, *, catalog: Sequence[str] | None = None,
          genres: Mapping[str, str] | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Split, (tune,) fit and evaluate. `catalog` fixes the item set (and coverage's base);
    `genres` (item -> genre) adds the taste check of `music.taste` to the metrics."""
    say = progress or (lambda _: None)
    split = config.split(frame)
    say(f"split: {split.description}: {len(split.train):,} train, {len(split.test):,} test events")
    matrix = interaction_matrix(split.train, catalog)
    dropped = 0 if catalog is None else int(
        (~split.train["item"].astype(str).isin(set(catalog))).sum())
    holdout = hold_out(split, config.history_length, set(matrix.items[matrix.popularity > 0]),
                       max_users=config.max_eval_users, seed=config.seed)
    say(f"hold-out: {len(holdout.users):,} users with something new after the cut")
    if len(holdout.users) < config.min_eval_users:
        say(f"warning: only {len(holdout.users):,} evaluation users (fewer than "
            f"{config.min_eval_users}): the metrics are too noisy to decide a promotion on")
    size = len(matrix.items)

    baseline = _candidate("popularity", matrix, holdout, config, None)
    trials: list[Trial] = []
    params = config.params
    if params is None:
        params, trials = tune(split.train, config, catalog=catalog, progress=say)
        say(f"tuned: {params}")
    als = _candidate("ALS", matrix, holdout, config, params)
    if genres:
        taste = favourite_genres(split.train, holdout, genres)
        for candidate in (baseline, als):
            candidate.metrics |= genre_share(candidate.model.predict, holdout, taste,
                                             k=config.k)
    return TrainResult(split, holdout, size, baseline, als, trials, dropped,
                       config.min_eval_users)


def tune(train_frame: pd.DataFrame, config: TrainConfig, *,
         catalog: Sequence[str] | None = None,
         progress: Progress | None = None) -> tuple[AlsParams, list[Trial]]:
    """Search the grid on a validation window carved from `train_frame`.

    One axis at a time (coordinate search): starting from the grid point nearest to
    implicit's defaults, try
    every value of `factors` with the rest fixed and keep the best, then
    `regularization`, `alpha`, `iterations`; repeat for `config.tune_rounds` rounds or
    until a round changes nothing. About 17 fits a round where the full product of the
    default grid would be 300; the parameters interact little enough for this to find
    the same corner (the README's table shows what it found). Returns the best point and
every trial.
    """
    say = progress or (lambda _: None)
    split = config.split(train_frame)
    matrix = interaction_matrix(split.train, catalog)
    holdout = hold_out(split, config.history_length, set(matrix.items[matrix.popularity > 0]),
                       max_users=config.max_tune_users, seed=config.seed)
    say(f"tuning on {split.description} of the training part, "
        f"{len(holdout.users):,} validation users")
    recall = f"recall@{config.k}"
    trials: dict[AlsParams, Trial] = {}

    def score(params: AlsParams) -> float:
        if params not in trials:
            start = time.perf_counter()
            model = fit_als(matrix, params, seed=config.seed)
            seconds = time.perf_counter() - start
            metrics = evaluate(model.predict, holdout, catalog_size=len(matrix.items),
                               k=config.k)
            trials[params] = Trial(params, metrics, seconds)
            say(f"  {params}: {recall} {metrics[recall]:.4f} ({seconds:.1f}s)")
        return trials[params].metrics[recall]

    current = start_point(config.grid)
    for _ in range(config.tune_rounds):
        start_of_round = current
        for axis, values in config.grid.items():
            for value in values:
                candidate = current.with_value(axis, value)
                # only a strictly better score moves the search: ties keep the cheaper
                # values listed first, or the point already held
                if score(candidate) > score(current):
                    current = candidate
        if current == start_of_round:
            break
    return current, list(trials.values())


def start_point(grid: dict[str, list[float | int]]) -> AlsParams:
    """The grid point nearest (on a log scale) to implicit's defaults, axis by axis."""
    point = defaults = AlsParams()
    for axis, values in grid.items():
        if values:
            target = math.log(getattr(defaults, axis))
            point = point.with_value(axis, min(values, key=lambda v: abs(math.log(v) - target)))
    return point


def _candidate(label: str, matrix: Matrix, holdout: HoldOut, config: TrainConfig,
               params: AlsParams | None) -> Candidate:
    start, cpu = time.perf_counter(), time.process_time()
    model = fit_popularity(matrix) if params is None else fit_als(matrix, params,
                                                                 seed=config.seed)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    scores = score_users(model.predict, holdout, catalog_size=len(matrix.items), k=config.k)
    return Candidate(label, model, scores.metrics(config.seed), seconds,
                     params.as_dict() if params else {}, cpu, scores)


def compare(frame: pd.DataFrame, config: TrainConfig, *,
            progress: Progress | None = None) -> list[Candidate]:
    """Popularity, ALS with implicit's defaults and tuned ALS on one split (no registry)."""
    say = progress or (lambda _: None)
    tuned_config = TrainConfig(**{**config.__dict__, "params": None})
    result = train(frame, tuned_config, progress=say)
    matrix = interaction_matrix(result.split.train)
    defaults = _candidate("ALS", matrix, result.holdout, config, AlsParams())
    defaults.label = "ALS, implicit's defaults"
    result.als.label = "ALS, tuned"
    return [result.baseline, defaults, result.als]


def history_sample(frame: pd.DataFrame, length: int, rows: int, seed: int = 0) -> np.ndarray:
    """Up to `rows` users' recent histories, [rows, length]: a sample or a profile's data."""
    users, histories = recent_histories(frame, length)
    if len(users) > rows:
        histories = histories[np.sort(np.random.default_rng(seed).choice(len(users), rows,
                                                                          replace=False))]
    return histories

