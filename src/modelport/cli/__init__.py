"""The `modelport` command.

One top-level Typer app; each command group is a sub-app in its own module
(`models`), and single commands are added here (`quickstart`). A new group or command
(`serve`, `batch`, `stream`, `report`) lives in its own module and is added to `app`
below; it reads the settings with `modelport.cli.context.state(ctx).settings`.

`main()` is the console-script entry point: it builds the settings once, runs the app,
and turns every error a user can cause into one red line on stderr and an exit code:
1 for a `ModelportError` (or a file that cannot be read), 2 for bad usage, never a
traceback. Anything else is a bug: one line too, and `--traceback` shows where.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from typer.exceptions import TyperException

from modelport.cli import (
    batch,
    feedback,
    keys,
    models,
    promote,
    report,
    schedule,
    serve,
    stream,
    traffic,
)
from modelport.cli.context import CliState, one_line, state
from modelport.errors import ModelportError
from modelport.settings import Settings

app = typer.Typer(
    name="modelport",
    help="Put trained machine-learning models into production as microservices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion, --show-completion
)
app.add_typer(models.app, name="models")
app.add_typer(keys.app, name="keys")
app.add_typer(traffic.app, name="traffic")
app.add_typer(feedback.app, name="feedback")
app.command()(serve.serve)
app.command()(batch.batch)
app.command()(schedule.schedule)
app.command()(schedule.retrain)
app.command()(stream.stream)
app.command()(report.report)
app.command()(promote.promote)


def _version(value: bool) -> None:
    if value:
        from modelport import __version__

        typer.echo(f"modelport {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    registry_url: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL of the registry (default: a SQLite file under the home).",
        show_default=False)] = None,
    artifacts: Annotated[str | None, typer.Option(
        help="Artifact store: a directory or s3://bucket/prefix (default: home/artifacts).",
        show_default=False)] = None,
    home: Annotated[Path | None, typer.Option(
        help="Where local state lives (default: ./.modelport, or MODELPORT_HOME).",
        show_default=False)] = None,
    traceback: Annotated[bool, typer.Option(
        "--traceback", help="On an unexpected error, show the full traceback.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Put trained machine-learning models into production as microservices."""
    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
    overrides = {"registry_url": registry_url, "artifacts": artifacts, "home": home}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    ctx.obj = CliState(settings=settings)


@app.command()
def quickstart(ctx: typer.Context) -> None:
    """Train a small scikit-learn model, register it, promote it and predict with it."""
    from modelport.quickstart import run as run_quickstart

    cli = state(ctx)
    with cli.registry() as reg:
        run_quickstart(reg, cli.out, command=_command_name())


def _command_name() -> str:
    """`modelport`, or the script's path when it is not on PATH (`.venv/bin/modelport`)."""
    script = Path(sys.argv[0])
    if script.name == "modelport" and shutil.which("modelport") is None:
        relative = os.path.relpath(script)
        return str(script.resolve()) if relative.startswith("..") else relative
    return "modelport"


def command() -> Any:
    """The `modelport` command, its help texts whole: a docstring's first paragraph is
    one sentence or two, and the command lists show it as written, so the line breaks
    of the source would cut it mid-sentence ("in resumable / chunks.")."""
    root = typer.main.get_command(app)
    todo = [root]
    while todo:
        cmd = todo.pop()
        if cmd.help:
            first, sep, rest = cmd.help.strip().partition("\n\n")
            cmd.help = " ".join(first.split()) + sep + rest
        todo.extend(getattr(cmd, "commands", {}).values())  # a group's
    return root


def run(argv: Sequence[str] | None, settings: Settings) -> int:
    """Run the command line `argv` with `settings`; returns the exit code."""
    command_ = command()
    err = CliState(settings=settings)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = command_.main(args=args, prog_name="modelport", standalone_mode=False,
                              obj=settings)
    except TyperException as exc:  # bad usage (exit 2), or a Click error of another kind
        message = exc.format_message()
        if not message:  # `no_args_is_help`: the help has been printed already
            return exc.exit_code
        usage = getattr(exc, "ctx", None)
        if exc.exit_code == 2 and usage is not None:
            message += f" (see '{usage.command_path} --help')"
        err.error(message)
        return exc.exit_code
    except typer.Abort:
        err.error("aborted")
        return 1
    except ModelportError as exc:
        err.error(str(exc))
        return 1
    except OSError as exc:
        err.error(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return 1
    except Exception as exc:
        if "--traceback" in args:
            raise
        err.error(f"unexpected {type(exc).__name__}: {exc} (rerun with --traceback, "
                  "and please report it)")
        return 1
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> None:
    """The `modelport` console script: settings are read here, once."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = "MODELPORT_" + "__".join(str(p) for p in problem["loc"]).upper()
        CliState(settings=Settings.model_construct()).error(
            f"bad setting {where}: {one_line(problem['msg'])}")
        sys.exit(1)
    sys.exit(run(argv, settings))


__all__ = ["app", "main", "run"]
