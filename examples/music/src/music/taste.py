"""Does a listener's top-k follow their taste? The share of it in their favourite genre.

Recall says whether the model finds what a listener plays next; it does not say
whether a listener who plays mostly soul is shown mostly soul. The check, per
evaluated user: their favourite genre is the genre most of their training events fall
in; the share of their top k in that genre is compared with that genre's share of
the catalogue (what a list blind to taste would get on average) and with its share
of the listener's own events (what a list that follows the taste fully would get).
Means over the hold-out's users, in the trainer's report and the registry's metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from music.metrics import BATCH, Predict
from music.split import HoldOut


@dataclass
class Taste:
    """The genre most of each hold-out user's training events fall in."""

    favourite: np.ndarray
    """[users]: the genre, in the hold-out's order ("" where none is known)."""
    own_share: np.ndarray
    """[users]: the share of the user's training events in it."""
    catalog_share: np.ndarray
    """[users]: the share of the catalogue's items in it."""
    genres: Mapping[str, str]


def favourite_genres(train: pd.DataFrame, holdout: HoldOut,
                     genres: Mapping[str, str]) -> Taste:
    """Each evaluated user's favourite genre from their training events."""
    events = pd.DataFrame({"user": train["user"].astype(str),
                           "genre": train["item"].astype(str).map(genres)}).dropna()
    counts = events.groupby(["user", "genre"]).size()
    totals = counts.groupby(level="user").sum()
    # the most played genre; a tie goes to the genre first in name order
    top = counts.sort_values(ascending=False, kind="stable").groupby(level="user").head(1)
    by_user = {user: (genre, n / totals[user]) for (user, genre), n in top.items()}
    catalog = pd.Series(list(genres.values())).value_counts(normalize=True)
    favourite, own, share = [], [], []
    for user in holdout.users:
        genre, fraction = by_user.get(str(user), ("", np.nan))
        favourite.append(genre)
        own.append(fraction)
        share.append(float(catalog.get(genre, np.nan)))
    return Taste(np.asarray(favourite, dtype=object), np.asarray(own, dtype=np.float64),
                 np.asarray(share, dtype=np.float64), genres)


def genre_share(predict: Predict, holdout: HoldOut, taste: Taste, *,
                k: int = 10) -> dict[str, float]:
    """`genre_share@k` of a model's answers, beside the catalogue's and the users' own
    share of the same genres, over the users whose favourite genre is known."""
    known = taste.favourite != ""
    if not known.any():
        return {}
    shares = np.full(len(holdout.users), np.nan)
    with threadpool_limits(1, "blas"):  # as in music.metrics: one small solve a user
        for start in range(0, len(holdout.users), BATCH):
            out = predict({"history": holdout.histories[start:start + BATCH]})
            for row, items in enumerate(np.asarray(out["items"]), start):
                shown = [str(i) for i in items[:k] if i]
                if known[row] and shown:
                    hits = sum(taste.genres.get(i) == taste.favourite[row] for i in shown)
                    shares[row] = hits / len(shown)
    counted = known & ~np.isnan(shares)
    return {f"genre_share@{k}": float(shares[counted].mean()),
            "genre_catalog_share": float(taste.catalog_share[counted].mean()),
            "genre_own_share": float(taste.own_share[counted].mean()),
            "genre_users": int(counted.sum())}
