"""`modelport traffic …`: show and change a running server's traffic policies.

A thin client of the server's admin API (`/admin/traffic`, a key with the `admin`
scope): the policies live in the serving process, so that is where they change.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer
from rich.table import Table

from modelport.cli.context import state
from modelport.errors import ModelportError

app = typer.Typer(
    name="traffic",
    help="Show and change the shadow and canary of a running server's models.",
    no_args_is_help=True,
)

Server = Annotated[str, typer.Option(
    "--server", help="The server's base URL, e.g. http://127.0.0.1:8000.",
    show_default=False)]
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", help="A key with the admin scope.", show_default=False)]
Name = Annotated[str, typer.Argument(metavar="NAME", help="A served model's name.",
                                     show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TIMEOUT_S = 60.0  # loading a new policy's models may take a while


@app.command("show")
def show(ctx: typer.Context, server: Server, api_key: ApiKey = None,
         as_json: JsonFlag = False) -> None:
    """Each served model's shadow and canary, and the versions they serve."""
    models = _call("GET", server, "/admin/traffic", api_key)["models"]
    if as_json:
        state(ctx).json(models)
        return
    table = Table("model", "shadow", "canary")
    for name, policy in models.items():
        targets = policy.get("targets", {})
        table.add_row(name, _describe(policy.get("shadow"), targets),
                      _describe(policy.get("canary"), targets))
    state(ctx).out.print(table)


@app.command("set")
def set_policy(
    ctx: typer.Context,
    name: Name,
    server: Server,
    api_key: ApiKey = None,
    shadow: Annotated[str | None, typer.Option(
        help="Shadow model, NAME@ALIAS or NAME:VERSION.", show_default=False)] = None,
    fraction: Annotated[float, typer.Option(
        help="Share of the calls the shadow also scores (0-1].")] = 1.0,
    canary: Annotated[str | None, typer.Option(
        help="Canary model, NAME@ALIAS or NAME:VERSION.", show_default=False)] = None,
    weight: Annotated[float | None, typer.Option(
        help="Percent of the calls the canary answers.", show_default=False)] = None,
    key: Annotated[str | None, typer.Option(
        help="Sticky key of the canary: header:NAME or field:NAME.",
        show_default=False)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Give NAME a shadow and/or a canary (what is not named is kept)."""
    body: dict[str, Any] = {}
    if shadow is not None:
        body["shadow"] = {"ref": shadow, "fraction": fraction}
    if canary is not None:
        if weight is None:
            raise typer.BadParameter("--canary needs --weight", param_hint="--weight")
        body["canary"] = {"ref": canary, "weight": weight,
                          **({"key": key} if key is not None else {})}
    if not body:
        raise typer.BadParameter("name a --shadow or a --canary (or use `traffic clear`)")
    _print(ctx, _call("PATCH", server, f"/admin/traffic/{name}", api_key, body), as_json)


@app.command("clear")
def clear(
    ctx: typer.Context,
    name: Name,
    server: Server,
    api_key: ApiKey = None,
    shadow_only: Annotated[bool, typer.Option("--shadow", help="Remove only the shadow.")]
    = False,
    canary_only: Annotated[bool, typer.Option("--canary", help="Remove only the canary.")]
    = False,
    as_json: JsonFlag = False,
) -> None:
    """Remove NAME's shadow and canary (or only the one named)."""
    path = f"/admin/traffic/{name}"
    if shadow_only or canary_only:
        body = {k: None for k, on in (("shadow", shadow_only), ("canary", canary_only)) if on}
        answer = _call("PATCH", server, path, api_key, body)
    else:
        answer = _call("DELETE", server, path, api_key)
    _print(ctx, answer, as_json)


def _print(ctx: typer.Context, answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        state(ctx).json(answer)
        return
    targets = answer.get("targets", {})
    state(ctx).out.print(f"{answer['model']}: shadow "
                         f"{_describe(answer.get('shadow'), targets)}, canary "
                         f"{_describe(answer.get('canary'), targets)}")


def _describe(policy: dict[str, Any] | None, targets: dict[str, Any]) -> str:
    if not policy:
        return "none"
    target = targets.get(policy["ref"], {})
    served = f"version {target['version']}" if target.get("version") else "not loaded"
    share = f"{policy['weight']:g}%" if "weight" in policy else f"{policy['fraction']:.0%}"
    sticky = f", by {policy['key']}" if policy.get("key") else ""
    return f"{policy['ref']} ({served}), {share}{sticky}"


def _call(method: str, server: str, path: str, api_key: str | None,
          body: dict[str, Any] | None = None) -> dict[str, Any]:
    url = server.rstrip("/") + path
    request = urllib.request.Request(
        url, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json",
                 **({"x-api-key": api_key} if api_key else {})})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        raise ModelportError(f"{method} {url}: {exc.code} {_message(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelportError(f"{method} {url}: cannot reach the server ({reason})") from None


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(exc.read())
    except ValueError:
        return str(exc.reason)
    return str(detail.get("error", detail)) if isinstance(detail, dict) else str(detail)
