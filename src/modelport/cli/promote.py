"""`modelport promote`: gate a version against production, move the alias, guard it.

With `--guard` the command stays in the foreground for the window, printing what the
guard decided; it exits 1 when the gate refuses the version or the guard rolls it
back (for CI pipelines), 2 when a gate or guard expression does not parse.
"""

from __future__ import annotations

from typing import Annotated

import typer

from modelport.cli.context import state
from modelport.errors import InvalidInput
from modelport.promotion import METRICS, MetricGate, parse_duration, parse_guard
from modelport.promotion import promote as run


def promote(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False,
                                        help="Model name.")],
    version: Annotated[int, typer.Argument(metavar="VERSION", min=1, show_default=False,
                                           help="The candidate version.")],
    alias: Annotated[str, typer.Option(help="The alias to move.")] = "production",
    gate: Annotated[str | None, typer.Option(
        help="Promote only if the candidate's registered metric wins, e.g. "
             "'auc>=production' or 'mae<=production'.", show_default=False)] = None,
    guard: Annotated[str | None, typer.Option(
        help="Live bounds, e.g. 'error_rate<1%,p99_ms<50,agreement>95%': on a breach within "
             f"the window the alias is rolled back. Metrics: {', '.join(sorted(METRICS))}.",
        show_default=False)] = None,
    window: Annotated[str, typer.Option(help="How long the guard watches: 90s, 10m, 1h."
                                        )] = "10m",
    min_requests: Annotated[int, typer.Option(
        min=1, help="Calls before rates and latencies are judged.")] = 10,
    every: Annotated[str | None, typer.Option(
        help="How often the guard looks (default: the log's flush interval).",
        show_default=False)] = None,
    reason: Annotated[str | None, typer.Option(help="Recorded in the alias history.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only judge the gate; move nothing, record nothing.")] = False,
) -> None:
    """Move ALIAS of NAME to VERSION, after a gate on registered metrics and under a guard
    on live metrics that rolls it back on a breach."""
    # bad expressions are bad usage: one line and exit 2, before anything moves
    try:
        gate_check = MetricGate(gate) if gate is not None else None
        if guard is not None:
            parse_guard(guard, set(METRICS))
            parse_duration(window)
        every_s = parse_duration(every, "--every") if every is not None else None
    except InvalidInput as exc:
        raise typer.BadParameter(str(exc)) from None
    cli = state(ctx)
    with cli.registry() as reg:
        p = run(reg, name, version, alias=alias, gate=gate_check, guard=guard,
                window=window if guard is not None else None, min_requests=min_requests,
                every_s=every_s, reason=reason, dry_run=dry_run)
        if p.verdict is not None:
            word = {"promote": "passed", "refuse": "refused"}.get(p.verdict.word,
                                                                  p.verdict.word)
            cli.out.print(f"gate {word}: {p.verdict.reason}", highlight=False)
            if not p.verdict.passed:
                raise typer.Exit(1)
        if not p.moved:
            return
        before = "none" if p.previous is None else str(p.previous)
        cli.out.print(f"{name}@{alias}: {before} → {version}", highlight=False)
        if p.guard is None:
            return
        cli.out.print(f"guard: watching {p.guard.describe()}", highlight=False)
        result = p.watch()
    assert result is not None
    cli.out.print(result.reason, highlight=False)
    if result.outcome == "rolled_back":
        cli.out.print(f"{name}@{alias}: {version} → {result.rolled_back_to} (rolled back by "
                      "the guard)", highlight=False)
        raise typer.Exit(1)
