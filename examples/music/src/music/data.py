"""A seeded, synthetic music service: catalogue, users and their listening history.

The generator stands in for a real service's logs, so it reproduces the properties a
recommender meets in production rather than uniform noise:

- **popularity is a power law**: artists' popularity is Zipf-like and tracks inherit
  their artist's, so a small head of tracks takes a large share of the listens;
- **tastes are narrow**: each user's genre taste is a Dirichlet draw concentrated on a
  few genres, plus a handful of favourite artists from those genres;
- **people repeat**: part of every user's listens are replays of a few favourite tracks;
- **time is sessions**: each user joins at some day, listens in sessions of a few
  tracks played back to back, and sessions are spread over the window without overlap;
- **time has a rhythm**: sessions start mostly in the evening, few at night, a little
  more at weekends (a daily and weekly cycle, in UTC), and the window ends on the day
  the data is generated, so a history reads "3 h ago, yesterday", not a date long past;
- **activity is skewed**: a few heavy users make a large part of the traffic.

Everything is vectorized numpy (no Python loop over listens), so the defaults (5,000
users, 20,000 tracks, 1 million listens) take a few seconds, and a seed fixes all of it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

GENRES = [
    "pop", "rock", "hip-hop", "electronic", "jazz", "classical", "r&b", "country",
    "metal", "folk", "reggae", "blues", "latin", "punk", "soul", "ambient",
    "indie", "house", "techno", "k-pop", "afrobeat", "funk", "gospel", "disco",
]
ADJECTIVES = [
    "blue", "broken", "golden", "silent", "electric", "wild", "lonely", "burning",
    "midnight", "silver", "velvet", "hollow", "crimson", "restless", "endless", "frozen",
    "distant", "sweet", "neon", "quiet", "secret", "shining", "paper", "tender",
]
NOUNS = [
    "heart", "river", "city", "dream", "fire", "summer", "highway", "ocean", "shadow",
    "garden", "mirror", "thunder", "window", "moon", "road", "echo", "rain", "island",
    "letter", "signal", "horizon", "kingdom", "train", "storm", "machine", "daylight",
]
FIRST = ["ada", "ben", "cleo", "dev", "eli", "fay", "gus", "ivy", "jon", "kai",
         "lena", "milo", "nina", "otis", "pia", "ray", "sol", "tess", "uma", "zed"]
LAST = ["stone", "rivers", "vance", "moreau", "okafor", "lind", "costa", "haze",
        "nakamura", "reyes", "black", "frost", "kowalski", "adler", "quinn", "sato"]

DAY = 86_400


@dataclass(frozen=True)
class Config:
    """The knobs of the generator; the defaults are the reference data set."""

    users: int = 5_000
    tracks: int = 20_000
    listens: int = 1_000_000
    seed: int = 0
    genres: int = 16
    days: int = 180
    end: str | None = None
    """The day the window ends (UTC midnight); None: today, the day of generating."""
    tracks_per_artist: float = 8.0
    favourite_artists: int = 5
    favourite_tracks: int = 20
    session_length: float = 12.0
    """Mean tracks per session (geometric)."""

    @property
    def start(self) -> pd.Timestamp:
        """The window's first moment: `days` before `end`."""
        end = pd.Timestamp(self.end or pd.Timestamp.now(tz="UTC"))
        end = (end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")).floor("D")
        return end - pd.Timedelta(days=self.days)


# Relative listening by hour of day: quiet before dawn, a morning commute, an evening
# peak (the shape of published streaming-traffic curves; exact values matter little)
HOURLY = np.array([0.45, 0.30, 0.20, 0.14, 0.12, 0.15, 0.30, 0.55, 0.70, 0.65, 0.60, 0.62,
                   0.70, 0.68, 0.64, 0.66, 0.74, 0.85, 0.95, 1.00, 1.00, 0.95, 0.82, 0.62])
WEEKEND = 1.25
"""Saturdays and Sundays against weekdays."""


@dataclass
class Dataset:
    catalog: pd.DataFrame
    """item, title, artist_id, artist, genre, duration_s."""
    users: pd.DataFrame
    """user, joined, top_genre, favourite_artists, listens."""
    listens: pd.DataFrame
    """user, item, ts (UTC), sorted by ts."""

    def write(self, folder: Path) -> dict[str, Path]:
        """Write `catalog.parquet`, `users.parquet` and `listens.parquet` into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {name: folder / f"{name}.parquet" for name in ("catalog", "users", "listens")}
        self.catalog.to_parquet(paths["catalog"], index=False)
        self.users.to_parquet(paths["users"], index=False)
        self.listens.to_parquet(paths["listens"], index=False)
        return paths


def generate(config: Config | None = None) -> Dataset:
    """Generate a catalogue, users and listens; the same config gives the same data."""
    cfg = config or Config()
    if min(cfg.users, cfg.tracks, cfg.listens, cfg.genres, cfg.days) < 1:
        raise ValueError("users, tracks, listens, genres and days must all be at least 1")
    rng = np.random.default_rng(cfg.seed)
    genre_names = _names(GENRES, cfg.genres)
    # genres themselves are unequally popular: pop is bigger than gospel
    genre_share = _normalize(1.0 / np.arange(1, cfg.genres + 1) ** 0.8)[rng.permutation(cfg.genres)]

    n_artists = max(1, min(cfg.tracks, round(cfg.tracks / cfg.tracks_per_artist)))
    artist_genre = rng.choice(cfg.genres, size=n_artists, p=genre_share)
    # Zipf over a random order: a few stars, a long tail of small artists
    artist_pop = 1.0 / (rng.permutation(n_artists) + 1.0) ** 1.1

    # every artist gets one track, the rest go preferably to popular artists
    extra = rng.choice(n_artists, size=cfg.tracks - n_artists, p=_normalize(artist_pop ** 0.5))
    track_artist = np.concatenate([np.arange(n_artists), extra])
    # mostly the artist's genre; some crossover
    crossover = rng.random(cfg.tracks) < 0.15
    track_genre = np.where(crossover, rng.choice(cfg.genres, size=cfg.tracks, p=genre_share),
                           artist_genre[track_artist])
    # a hit or two per artist, then album tracks: lognormal spread within an artist
    track_pop = artist_pop[track_artist] * rng.lognormal(0.0, 1.0, cfg.tracks)
    duration = np.clip(rng.lognormal(np.log(210.0), 0.3, cfg.tracks), 60, 900).astype(np.int32)

    users = _users(rng, cfg, genre_share, artist_genre, artist_pop)
    by_genre = _Sampler(track_genre, track_pop, cfg.genres)
    by_artist = _Sampler(track_artist, track_pop, n_artists)

    # favourite tracks: half from favourite artists, half from the genre taste
    n_fav = cfg.favourite_tracks
    fav_owner = np.repeat(np.arange(cfg.users), n_fav)
    fav_from_artist = np.tile(np.arange(n_fav) % 2 == 0, cfg.users)
    fav_tracks = _pick(rng, fav_owner, fav_from_artist, users, by_genre, by_artist)
    fav_tracks = fav_tracks.reshape(cfg.users, n_fav)

    listen_user = np.repeat(np.arange(cfg.users), users.listens)
    n = listen_user.size
    source = rng.random(n)
    repeat = source < users.repeat_rate[listen_user]
    from_artist = ~repeat & (source < users.repeat_rate[listen_user] + 0.25)
    item = _pick(rng, listen_user, from_artist, users, by_genre, by_artist)
    # replays favour the first favourites: index skewed towards 0
    fav_index = (n_fav * rng.random(n) ** 2).astype(np.int64)
    item = np.where(repeat, fav_tracks[listen_user, fav_index], item)

    start = cfg.start
    ts = _timestamps(rng, cfg, listen_user, users, duration[item], _clock(start, cfg.days))
    order = np.argsort(ts, kind="stable")
    return Dataset(
        catalog=_catalog(rng, cfg, track_artist, track_genre, duration, genre_names),
        users=pd.DataFrame({
            "user": _ids("u", cfg.users).copy(),
            "joined": _utc(start, users.joined),
            "top_genre": np.asarray(genre_names, dtype=object)[
                _most_played(listen_user, track_genre[item], cfg.users, cfg.genres)],
            "favourite_artists": list(_ids("a", n_artists)[users.fav_artists]),
            "listens": users.listens,
        }),
        listens=pd.DataFrame({
            "user": pd.Categorical.from_codes(listen_user[order], _ids("u", cfg.users)),
            "item": pd.Categorical.from_codes(item[order], _ids("t", cfg.tracks)),
            "ts": _utc(start, ts[order]),
        }),
    )


@dataclass
class _Users:
    taste: np.ndarray
    """[users, genres] rows summing to 1."""
    fav_artists: np.ndarray
    """[users, favourite_artists] artist indices."""
    listens: np.ndarray
    joined: np.ndarray
    """Seconds after the window's start."""
    repeat_rate: np.ndarray


def _users(rng: np.random.Generator, cfg: Config, genre_share: np.ndarray,
           artist_genre: np.ndarray, artist_pop: np.ndarray) -> _Users:
    # a small total concentration keeps most of a user's taste on two or three genres
    taste = rng.dirichlet(np.maximum(2.0 * genre_share, 1e-3), size=cfg.users)
    by_genre = _Sampler(artist_genre, artist_pop, cfg.genres)
    owners = np.repeat(np.arange(cfg.users), cfg.favourite_artists)
    fav_artists = by_genre.draw(rng, _draw_rows(rng, taste, owners))
    # activity is lognormal: a few heavy listeners; everyone listens a little
    floor = min(5, cfg.listens // cfg.users)
    activity = _normalize(rng.lognormal(0.0, 1.0, cfg.users))
    listens = floor + rng.multinomial(cfg.listens - floor * cfg.users, activity)
    # most users were there from day one; the rest joined during the window
    late = rng.random(cfg.users) < 0.3
    joined = np.where(late, rng.uniform(0, max(cfg.days - 30, 1), cfg.users), 0.0) * DAY
    return _Users(taste=taste, fav_artists=fav_artists.reshape(cfg.users, -1),
                  listens=listens, joined=joined, repeat_rate=rng.beta(2.0, 5.0, cfg.users))


def _most_played(user: np.ndarray, genre: np.ndarray, n_users: int,
                 n_genres: int) -> np.ndarray:
    """Each user's most played genre: what the page says they listen to "mostly".

    Not the top of their taste draw: favourite artists and replayed favourites make
    that another genre for about one user in five, and a listener described as "mostly
    soul" who plays mostly pop is then, rightly, recommended pop.
    """
    plays = np.bincount(user * n_genres + genre, minlength=n_users * n_genres)
    return np.asarray(plays.reshape(n_users, n_genres).argmax(axis=1), dtype=np.int64)


class _Sampler:
    """Draw members of a group (tracks of a genre, of an artist) by popularity.

    Members are sorted by group, and each gets the key `group + cumulative share of its
    group's popularity`, so a key is in [g, g + 1) for group g. Drawing member of group
    g is then one `searchsorted(keys, g + u)` for uniform u: a whole batch of draws,
    each in its own group, in one vectorized call.
    """

    def __init__(self, group: np.ndarray, weight: np.ndarray, n_groups: int) -> None:
        self.order = np.argsort(group, kind="stable")
        g, w = group[self.order], weight[self.order]
        totals = np.bincount(g, weights=w, minlength=n_groups)
        cum = np.cumsum(w) - np.concatenate([[0.0], np.cumsum(totals)])[g]
        self.keys = g + cum / totals[g]

    def draw(self, rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
        # a group without members (a genre no track has) yields the next group's first
        where = np.searchsorted(self.keys, groups + rng.random(groups.size) * (1 - 1e-12))
        return self.order[np.minimum(where, self.order.size - 1)]


def _pick(rng: np.random.Generator, owner: np.ndarray, from_artist: np.ndarray,
          users: _Users, by_genre: _Sampler, by_artist: _Sampler) -> np.ndarray:
    """One track per row: from a favourite artist of its owner, or from their taste."""
    genre = _draw_rows(rng, users.taste, owner)
    artist = users.fav_artists[owner, rng.integers(0, users.fav_artists.shape[1], owner.size)]
    return np.where(from_artist, by_artist.draw(rng, artist), by_genre.draw(rng, genre))


def _draw_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each entry of `rows`, a column drawn from that row of `probs`.

    The same keys as `_Sampler` (row + cumulative share), so one `searchsorted` draws
    for every entry without materializing a [len(rows), n_columns] table.
    """
    n_rows, n_cols = probs.shape
    cum = np.cumsum(probs, axis=1)
    keys = (np.arange(n_rows)[:, None] + cum / cum[:, -1:]).ravel()
    where = np.searchsorted(keys, rows + rng.random(rows.size) * (1 - 1e-12))
    return np.asarray(np.clip(where - rows * n_cols, 0, n_cols - 1), dtype=np.int64)


def _clock(start: pd.Timestamp, days: int) -> tuple[np.ndarray, np.ndarray]:
    """The daily and weekly rhythm as a monotone map from evenly spread time to the
    wall clock: (its knots in even time, the same knots in wall time), hourly, both
    in seconds after `start`. Even time runs fast through quiet hours and slowly
    through busy ones, so evenly spread sessions land on the clock in its rhythm."""
    hours = np.arange(days * 24)
    weekday = (start.weekday() + hours // 24) % 7
    intensity = HOURLY[hours % 24] * np.where(weekday >= 5, WEEKEND, 1.0)
    even = np.concatenate([[0.0], np.cumsum(intensity)])
    return even * (days * DAY / even[-1]), np.arange(hours.size + 1) * 3600.0


def _timestamps(rng: np.random.Generator, cfg: Config, user: np.ndarray, users: _Users,
                duration: np.ndarray, clock: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Seconds after the window's start for listens grouped by user, in sessions.

    Within a session tracks play back to back; sessions of a user are separated by
    random gaps scaled so the user's sessions fill the time from joining to the end of
    the window, which keeps them in order. Session starts (and the day a user joined)
    then go through the clock's rhythm; where that brings a session before the end of
    the user's previous one, it waits for it, so sessions never overlap.
    """
    joined = users.joined
    n = user.size
    first = np.ones(n, dtype=bool)
    first[1:] = user[1:] != user[:-1]
    new_session = first | (rng.random(n) < 1.0 / cfg.session_length)
    session = np.cumsum(new_session) - 1
    played = duration + rng.integers(0, 6, n)  # a few seconds between tracks
    offset = _exclusive_cumsum(played.astype(np.float64), session)

    s_user = user[new_session]
    s_length = np.bincount(session, weights=played)
    gaps = rng.exponential(1.0, s_user.size)
    n_users = joined.size
    # one trailing gap per user, so the last session does not end exactly at the window's end
    trailing = rng.exponential(1.0, n_users)
    gap_total = np.bincount(s_user, weights=gaps, minlength=n_users) + trailing
    free = np.maximum(cfg.days * DAY - joined
                      - np.bincount(s_user, weights=s_length, minlength=n_users), 0.0)
    gaps *= (free / gap_total)[s_user]
    starts = joined[s_user] + _exclusive_cumsum(gaps + s_length, s_user) + gaps
    starts = np.interp(starts, *clock)
    users.joined = np.interp(joined, *clock)
    same = np.zeros(s_user.size, dtype=bool)
    same[1:] = s_user[1:] == s_user[:-1]
    # rarely needed more than a few passes: each moves only sessions that overlap
    while True:
        previous_end = np.concatenate([[0.0], starts[:-1] + s_length[:-1]])
        late = same & (starts < previous_end)
        if not late.any():
            break
        starts[late] = previous_end[late]
    return np.asarray(starts[session] + offset, dtype=np.float64)


def _exclusive_cumsum(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Running sum of `values` before each row, restarting at each new (sorted) group."""
    total = np.cumsum(values)
    before = total - values
    starts = np.ones(values.size, dtype=bool)
    starts[1:] = group[1:] != group[:-1]
    base = np.maximum.accumulate(np.where(starts, before, 0.0))
    return np.asarray(before - base, dtype=np.float64)


def _catalog(rng: np.random.Generator, cfg: Config, track_artist: np.ndarray,
             track_genre: np.ndarray, duration: np.ndarray, genres: list[str]) -> pd.DataFrame:
    n_artists = int(track_artist.max()) + 1
    artist_names = _artist_names(rng, n_artists)
    adj = rng.integers(0, len(ADJECTIVES), cfg.tracks)
    noun = rng.integers(0, len(NOUNS), (2, cfg.tracks))
    form = rng.integers(0, 3, cfg.tracks)
    titles = [
        (f"{ADJECTIVES[a].title()} {NOUNS[n].title()}" if f == 0
         else f"{NOUNS[n].title()} of {NOUNS[m].title()}" if f == 1
         else f"The {ADJECTIVES[a].title()} {NOUNS[n].title()}s")
        for a, n, m, f in zip(adj, noun[0], noun[1], form, strict=True)
    ]
    return pd.DataFrame({
        "item": _ids("t", cfg.tracks).copy(),
        "title": titles,
        "artist_id": _ids("a", n_artists)[track_artist],
        "artist": artist_names[track_artist],
        "genre": np.asarray(genres, dtype=object)[track_genre],
        "duration_s": duration,
    })


def _artist_names(rng: np.random.Generator, n: int) -> np.ndarray:
    band = rng.random(n) < 0.5
    a, b = rng.integers(0, len(ADJECTIVES), n), rng.integers(0, len(NOUNS), n)
    f, s = rng.integers(0, len(FIRST), n), rng.integers(0, len(LAST), n)
    names = [
        f"The {ADJECTIVES[i].title()} {NOUNS[j].title()}s" if is_band
        else f"{FIRST[k].title()} {LAST[m].title()}"
        for is_band, i, j, k, m in zip(band, a, b, f, s, strict=True)
    ]
    return np.asarray(names, dtype=object)


def _utc(start: pd.Timestamp, seconds: np.ndarray) -> pd.Series:
    """Seconds after `start` as UTC timestamps, to the millisecond."""
    origin = start.value // 1_000_000
    ms = origin + np.round(seconds * 1000).astype(np.int64)
    return pd.Series(pd.to_datetime(ms, unit="ms", utc=True))


@functools.lru_cache(maxsize=16)
def _ids(prefix: str, n: int) -> np.ndarray:
    """`prefix` + zero-padded numbers; cached (read-only) as each is needed several times."""
    width = len(str(max(n - 1, 0)))
    ids = np.asarray([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)
    ids.flags.writeable = False
    return ids


def _names(base: list[str], n: int) -> list[str]:
    return [base[i % len(base)] + (f" {i // len(base) + 1}" if i >= len(base) else "")
            for i in range(n)]


def _normalize(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / x.sum(), dtype=np.float64)
