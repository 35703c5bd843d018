"""Time-based hold-outs, and the histories a recommender is asked with.

Recommenders are judged on the future: train on what happened before a moment, ask
for recommendations, and count how many of the items each user went on to play (and
had not played before) were in the list. A random split would let the model see a
user's later taste while being asked to predict it.

The trainer's default is `per_user`: the last share of each user's events, so every
user with a few events is evaluated (a global cut keeps only the users active on both
sides of one moment: 12 of about a thousand on one public data set), at the price of
letting other users' later events into training. A global cut (one moment for
everyone) lets nothing after it reach training; the split's description says which
was used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Split:
    train: pd.DataFrame
    test: pd.DataFrame
    description: str
    """How the cut was made, e.g. "global time cut: last 14 days (test from 2024-06-15)"."""


@dataclass
class HoldOut:
    """What evaluation asks and expects, user by user."""

    users: np.ndarray
    histories: np.ndarray
    """[users, H] object: each user's last H training events, most recent first, "" padded."""
    relevant: list[set[str]]
    """Items each user played after the cut and never before it, known to the model."""
    dropped_new_items: int
    """Test (user, item) pairs on items absent from training: no model can recommend them."""


def time_split(frame: pd.DataFrame, *, days: float | None = None, fraction: float = 0.2,
               per_user: bool = False) -> Split:
    """Hold out the last `days` (if given) or the last `fraction` of events by time.

    With `per_user`, the last `fraction` of each user's events (users with at least two).
    """
    if per_user:
        return _per_user(frame, fraction)
    ts = frame["ts"]
    if days is not None:
        if days <= 0:
            raise ValueError(f"days must be positive, got {days}")
        cut = ts.max() - pd.Timedelta(days=days)
        rule = f"last {days:g} days"
    else:
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
        cut = ts.quantile(1 - fraction)
        rule = f"last {fraction:.0%} of events"
    train, test = frame[ts < cut], frame[ts >= cut]
    if train.empty or test.empty:
        raise ValueError(f"the split ({rule}) leaves an empty train or test set")
    return Split(train.reset_index(drop=True), test.reset_index(drop=True),
                 f"global time cut: {rule} (test from {cut:%Y-%m-%d %H:%M} UTC)")


def _per_user(frame: pd.DataFrame, fraction: float) -> Split:
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    ordered = frame.sort_values(["user", "ts"], kind="stable")
    size = ordered.groupby("user", observed=True)["ts"].transform("size").to_numpy()
    rank = ordered.groupby("user", observed=True).cumcount().to_numpy()
    # at least one event on each side for users with two or more
    n_test = np.where(size >= 2, np.clip(np.ceil(size * fraction), 1, size - 1), 0)
    is_test = rank >= size - n_test
    train, test = ordered[~is_test], ordered[is_test]
    return Split(train.sort_values("ts", kind="stable", ignore_index=True),
                 test.sort_values("ts", kind="stable", ignore_index=True),
                 f"per-user time split: last {fraction:.0%} of each user's events")


def recent_histories(frame: pd.DataFrame, length: int,
                     users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each user's last `length` items, most recent first, padded with "".

    This is the request the recommender service sends (`history`, BYTES [H]), built
    from the event log, so evaluation asks exactly what production will ask. Returns
    (users, histories); `users` picks and orders the rows (unknown users get "" rows).
    """
    ordered = frame.sort_values("ts", ascending=False, kind="stable")
    codes, uniques = pd.factorize(ordered["user"].astype(str), sort=True)
    rank = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    keep = rank < length
    table = np.full((len(uniques), length), "", dtype=object)
    table[codes[keep], rank[keep]] = ordered["item"].astype(str).to_numpy()[keep]
    if users is None:
        return np.asarray(uniques, dtype=object), table
    row = pd.Index(uniques).get_indexer(users)
    out = np.full((len(users), length), "", dtype=object)
    out[row >= 0] = table[row[row >= 0]]
    return np.asarray(users, dtype=object), out


def hold_out(split: Split, history_length: int, known_items: set[str] | None = None,
             max_users: int | None = None, seed: int = 0) -> HoldOut:
    """The evaluation set: users with training history who played something new after.

    Items already in a user's training events are not counted: the service never
    recommends what is in the history. `known_items` defaults to the training items;
    `max_users` samples the users (seeded) to bound the evaluation's time.
    """
    train, test = split.train, split.test
    # one code space for both sides, so (user, item) pairs compare as integers
    user_codes, user_names = pd.factorize(pd.concat([train["user"], test["user"]]).astype(str))
    item_codes, items = pd.factorize(pd.concat([train["item"], test["item"]]).astype(str))
    n, n_items = len(train), len(items)
    train_pairs = user_codes[:n].astype(np.int64) * n_items + item_codes[:n]
    test_pairs = np.unique(user_codes[n:].astype(np.int64) * n_items + item_codes[n:])
    t_user, t_item = np.divmod(test_pairs, n_items)
    # new users get the popularity list from every model: nothing to compare
    keep = np.isin(t_user, user_codes[:n]) & ~np.isin(test_pairs, train_pairs)
    known_codes = (np.unique(item_codes[:n]) if known_items is None
                   else pd.Index(items).get_indexer(list(known_items)))
    is_known = np.isin(t_item, known_codes)
    dropped = int((keep & ~is_known).sum())
    keep &= is_known
    by_user: dict[int, set[str]] = {}
    for user, item in zip(t_user[keep].tolist(), items[t_item[keep]], strict=True):
        by_user.setdefault(user, set()).add(item)
    users = [str(user_names[u]) for u in by_user]
    relevant = list(by_user.values())
    if max_users is not None and len(users) > max_users:
        pick = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        users, relevant = [users[i] for i in pick], [relevant[i] for i in pick]
    chosen, histories = recent_histories(train, history_length, np.asarray(users, dtype=object))
    return HoldOut(chosen, histories, relevant, dropped)
