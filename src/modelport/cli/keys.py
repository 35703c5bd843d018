"""`modelport keys …`: create and revoke the API keys a server accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelport.cli.context import state
from modelport.errors import ConfigError
from modelport.security import add_key, remove_key

app = typer.Typer(name="keys", help="Create and revoke API keys.", no_args_is_help=True)

KeyFile = Annotated[Path | None, typer.Option(
    "--file", help="The key file (default: MODELPORT_SERVER__API_KEYS_FILE).",
    show_default=False)]


def _file(ctx: typer.Context, file: Path | None) -> Path:
    path = file or state(ctx).settings.server.api_keys_file
    if path is None:
        raise ConfigError("no key file: pass --file keys.yaml or set "
                          "MODELPORT_SERVER__API_KEYS_FILE")
    return path


@app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Who or what the key is for.")],
    scope: Annotated[list[str], typer.Option(
        "--scope", help="admin, predict (repeat for several).")],
    file: KeyFile = None,
) -> None:
    """Create a key (or rotate NAME's key) and print it once."""
    path = _file(ctx, file)
    key = add_key(path, name, scope)
    cli = state(ctx)
    cli.err.print(f"key {name!r} ({', '.join(scope)}) saved, hashed, in {path}; "
                  "it is shown only this once, and servers pick it up at their next start:")
    typer.echo(key)


@app.command("remove")
def remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The key to revoke.")],
    file: KeyFile = None,
) -> None:
    """Revoke NAME's key (servers stop accepting it at their next start)."""
    path = _file(ctx, file)
    remove_key(path, name)
    state(ctx).err.print(f"key {name!r} removed from {path}")
