"""`modelport models …`: register, inspect, promote, roll back and delete versions.

A thin adapter over `modelport.Registry`: each command parses its arguments, makes one
or two registry calls and prints the result as a Rich table, or as JSON with `--json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modelport.cli.context import CliState, human_size, state, when
from modelport.cli.files import (
    SAMPLE_SUFFIXES,
    SUFFIX_FLAVORS,
    read_model,
    read_sample,
    read_signature,
)
from modelport.registry import ModelVersion
from modelport.signature import FieldSpec

app = typer.Typer(
    name="models",
    help="Register, inspect, promote, roll back and delete model versions.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Name = Annotated[str, typer.Argument(
    metavar="NAME", help="Model name, e.g. breast-cancer.", show_default=False)]
Alias = Annotated[str, typer.Argument(
    metavar="ALIAS", help="Alias, e.g. production.", show_default=False)]


# --- reading ------------------------------------------------------------------------


@app.command("list")
def list_models(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(
        help="List this model's versions instead of all models.", show_default=False)] = None,
    as_json: JsonFlag = False,
) -> None:
    """List registered models (or, given NAME, that model's versions)."""
    cli = state(ctx)
    with cli.registry() as reg:
        if name is not None:
            _print_versions(cli, reg.list_versions(name), as_json)
            return
        models = reg.list_models()
    if as_json:
        cli.json(models)
        return
    if not models:
        cli.out.print("No models registered yet. Try [bold]modelport quickstart[/], or "
                      "[bold]modelport models register --help[/].")
        return
    table = Table("name", "versions", "latest", "aliases", "description", title="Models")
    for m in models:
        table.add_row(m["name"], str(m["versions"]), _opt(m["latest_version"]),
                      _aliases(m["aliases"]), m["description"] or "")
    cli.out.print(table)


def _print_versions(cli: CliState, versions: list[ModelVersion], as_json: bool) -> None:
    if as_json:
        cli.json([_record(v) for v in versions])
        return
    title = f"Versions of {versions[0].name}" if versions else "Versions"
    table = Table("version", "flavor", "aliases", "metrics", title=title)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("by")
    for v in versions:
        table.add_row(str(v.version), v.flavor, ", ".join(v.aliases), _pairs_text(v.metrics),
                      when(v.created_at).removesuffix(" UTC"), v.created_by or "")
    cli.out.print(table)


@app.command()
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(
        metavar="NAME[@ALIAS|:VERSION]", show_default=False,
        help="A model (its latest version), name@alias or name:version.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one version: signature, metrics, params, tags, artifact and aliases."""
    cli = state(ctx)
    with cli.registry() as reg:
        mv = reg.resolve(ref)
    if as_json:
        cli.json(_record(mv))
        return
    out = cli.out
    out.print(f"[bold]{mv.name}:{mv.version}[/]  flavor [cyan]{mv.flavor}[/]"
              + (f"  aliases [green]{', '.join(mv.aliases)}[/]" if mv.aliases else ""),
              highlight=False)
    out.print(f"created  {when(mv.created_at)}" + (f" by {mv.created_by}" if mv.created_by else ""),
              highlight=False)
    out.print(f"sha256   {mv.sha256}", highlight=False)
    out.print(f"size     {human_size(mv.size)}", highlight=False)
    sig = mv.signature
    out.print(f"input    {len(sig.inputs)} {'column' if sig.layout == 'columns' else 'tensor'}"
              f"{'s' if len(sig.inputs) != 1 else ''}, handed to the model as a "
              f"{sig.model_input}", highlight=False)
    out.print(_fields_table("Inputs", sig.inputs))
    out.print(_fields_table("Outputs", sig.outputs))
    for title, values in (("Metrics", mv.metrics), ("Params", mv.params), ("Tags", mv.tags)):
        if values:
            table = Table("name", "value", title=title, title_justify="left")
            for key, value in values.items():
                table.add_row(key, _value(value))
            out.print(table)


@app.command()
def history(
    ctx: typer.Context,
    name: Name,
    alias: Annotated[str | None, typer.Option(help="Only this alias's moves.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the audit trail of alias moves: who moved which alias from what to what."""
    cli = state(ctx)
    with cli.registry() as reg:
        events = reg.alias_history(name, alias)
    if as_json:
        cli.json([e.model_dump(mode="json") for e in events])
        return
    if not events:
        cli.out.print(f"No alias of {name} has moved yet.")
        return
    table = Table(title=f"Alias history of {name}")
    table.add_column("at (UTC)", no_wrap=True)
    for column in ("alias", "change", "from", "to", "by", "reason"):
        table.add_column(column)
    for e in events:
        table.add_row(when(e.at).removesuffix(" UTC"), e.alias, e.kind, _opt(e.from_version),
                      _opt(e.to_version), e.actor or "", e.reason or "")
    cli.out.print(table)


# --- writing ------------------------------------------------------------------------


@app.command()
def register(
    ctx: typer.Context,
    name: Name,
    file: Annotated[Path, typer.Argument(
        metavar="FILE", exists=True, dir_okay=False, readable=True, show_default=False,
        help=f"The trained model: {', '.join(SUFFIX_FLAVORS)}.")],
    sample: Annotated[Path, typer.Option(
        exists=True, dir_okay=False, readable=True, show_default=False,
        help=f"A few input rows ({', '.join(SAMPLE_SUFFIXES)}): the signature is inferred "
             "from them, and the model must predict them.")],
    flavor: Annotated[str | None, typer.Option(
        help="sklearn, onnx, lightgbm, xgboost or python; default from FILE.")] = None,
    metric: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE, repeatable; e.g. --metric auc=0.97.")] = None,
    param: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE training parameter, repeatable.")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE tag (kept as text), repeatable.")] = None,
    alias: Annotated[list[str] | None, typer.Option(
        help="Point this alias at the new version, e.g. --alias production.")] = None,
    reference: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, readable=True,
        help="Training data for the drift profile (same formats as --sample).")] = None,
    description: Annotated[str | None, typer.Option(
        help="What the model does (kept when the model is first registered).")] = None,
    trusted: Annotated[bool, typer.Option(
        "--trusted", help="Allow pickle/joblib files and unknown skops types: they can run "
                          "code when read, so only for files you trust.")] = False,
    allow_nan: Annotated[bool, typer.Option(
        "--allow-nan", help="Accept NaN/missing values in float inputs.")] = False,
    signature: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, readable=True,
        help="A signature written by hand (JSON or YAML: layout, inputs, outputs), used "
             "instead of the one inferred from --sample, which must fit it.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register FILE as the next version of NAME."""
    metrics = _parse_pairs(metric, "--metric", parse=True)
    params = _parse_pairs(param, "--param", parse=True)
    tags = _parse_pairs(tag, "--tag", parse=False)
    cli = state(ctx)
    model, register_flavor = read_model(file, flavor, trusted=trusted)
    sample_input = read_sample(sample)
    reference_data = read_sample(reference) if reference is not None else None
    declared = read_signature(signature) if signature is not None else None
    moves: list[tuple[str, int | None]] = []
    with cli.registry() as reg:
        mv = reg.register(name, model, sample_input=sample_input, flavor=register_flavor,
                          metrics=metrics, params=params, tags=tags,
                          reference_data=reference_data, allow_nan=allow_nan,
                          trusted=trusted, description=description, signature=declared)
        for a in alias or []:
            moves.append((a, reg.set_alias(name, a, mv.version)))
        if moves:
            mv = reg.get_version(name, mv.version)
    if as_json:
        cli.json(_record(mv))
        return
    cli.out.print(f"Registered [bold]{mv.name}:{mv.version}[/] ({mv.flavor}, "
                  f"{human_size(mv.size)}, sha256 {mv.sha256[:12]}…)", highlight=False)
    for a, old in moves:
        cli.out.print(f"{name}@{a}: {_opt(old)} → {mv.version}", highlight=False)


@app.command("alias")
def set_alias(
    ctx: typer.Context,
    name: Name,
    alias: Alias,
    version: Annotated[int | None, typer.Argument(
        metavar="VERSION", min=1, show_default=False,
        help="The version the alias should point at.")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the alias instead.")] = False,
    reason: Annotated[str | None, typer.Option(help="Recorded in the alias history.")] = None,
) -> None:
    """Point ALIAS of NAME at VERSION (promote), or remove it with --remove."""
    if (version is None) == (not remove):
        raise typer.BadParameter("give either a VERSION or --remove", param_hint="VERSION")
    cli = state(ctx)
    with cli.registry() as reg:
        if version is None:
            old = reg.resolve(f"{name}@{alias}").version
            reg.remove_alias(name, alias)
            cli.out.print(f"Removed {name}@{alias} (it pointed at {old})", highlight=False)
            return
        old_version = reg.set_alias(name, alias, version, reason=reason)
    cli.out.print(f"{name}@{alias}: {_opt(old_version)} → {version}", highlight=False)


@app.command()
def rollback(
    ctx: typer.Context,
    name: Name,
    alias: Alias,
    reason: Annotated[str | None, typer.Option(help="Recorded in the alias history.")] = None,
) -> None:
    """Move ALIAS back to the version it pointed at before its last move."""
    cli = state(ctx)
    with cli.registry() as reg:
        current = reg.resolve(f"{name}@{alias}").version
        mv = reg.rollback(name, alias, reason=reason)
    cli.out.print(f"{name}@{alias}: {current} → {mv.version} (rolled back)", highlight=False)


@app.command()
def delete(
    ctx: typer.Context,
    name: Name,
    version: Annotated[int, typer.Argument(metavar="VERSION", min=1, show_default=False,
                                           help="The version to delete.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a version and its artifact (refused while an alias points at it)."""
    cli = state(ctx)
    with cli.registry() as reg:
        mv = reg.get_version(name, version)
        # a version an alias points at is refused below, so asking first would be moot
        if not yes and not mv.aliases:
            if not sys.stdin.isatty():
                raise typer.BadParameter("not asking on a non-interactive input: pass --yes",
                                         param_hint="--yes")
            typer.confirm(f"Delete {name}:{version} and its artifact?", abort=True)
        reg.delete_version(name, version)
    cli.out.print(f"Deleted {name}:{version}", highlight=False)


# --- helpers ------------------------------------------------------------------------


def _parse_pairs(items: list[str] | None, option: str, *, parse: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        out[key.strip()] = _parse_value(raw) if parse else raw
    return out


def _parse_value(raw: str) -> Any:
    """JSON when it reads as JSON (0.97, 3, true, [1, 2]); the text itself otherwise."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _record(mv: ModelVersion) -> dict[str, Any]:
    # the drift profile is bulky and for the monitors, not for people or scripts
    return mv.model_dump(mode="json", exclude={"profile"})


def _fields_table(title: str, specs: list[FieldSpec]) -> Table:
    table = Table("name", "datatype", "shape", title=title, title_justify="left")
    for spec in specs:
        table.add_row(spec.name, spec.datatype, str(spec.shape) if spec.shape else "scalar")
    return table


def _aliases(aliases: dict[str, int]) -> str:
    return ", ".join(f"{a}→{v}" for a, v in sorted(aliases.items()))


def _pairs_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in values.items())


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def _opt(value: int | None) -> str:
    return "none" if value is None else str(value)


__all__ = ["app"]
