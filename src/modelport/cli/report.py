"""`modelport report`: an HTML report of traffic, outputs, versions and drift.

Exit codes: 0 the report is written (and the webhook, if any, took it); 1 it could not
be made, or the webhook failed after its retries (the report file is kept); 2 bad usage.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from modelport.cli.context import state
from modelport.registry.registry import check_name


def report(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(
        help="Report on this model only (default: every model in the prediction log).",
        show_default=False)] = None,
    since: Annotated[str, typer.Option(
        help="Start of the window: a duration before --until (24h, 7d, 30m) or an ISO "
             "8601 time.")] = "24h",
    until: Annotated[str | None, typer.Option(
        help="End of the window: an ISO 8601 time or a duration before now "
             "(default: now).", show_default=False)] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="The HTML file to write.")] = Path("report.html"),
    webhook: Annotated[str | None, typer.Option(
        help="POST a JSON summary of the report to this URL (retried with backoff).",
        show_default=False)] = None,
    timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds to wait for the webhook on each attempt.")] = 10.0,
    retries: Annotated[int, typer.Option(
        min=0, help="Webhook attempts after the first, on errors that may pass.")] = 3,
) -> None:
    """Write an HTML report: calls and latency, outputs over time, registered versions
    and their metrics, and each input feature's drift (PSI) since registration."""
    from modelport.jobs.report import generate, window

    cli = state(ctx)
    if model is not None:
        check_name(model)
    start, end = window(since, until)
    report_ = generate(cli.settings, start, end, out, model=model)
    summary = report_.summary(out)
    cli.err.print(Text(f"wrote {out}", style="bold green"))
    cli.out.print(summary["text"], highlight=False, soft_wrap=True)
    if webhook:
        from modelport.errors import WebhookError
        from modelport.jobs.webhook import post_json

        try:
            asyncio.run(post_json(webhook, summary, timeout=timeout, retries=retries))
        except WebhookError as exc:
            raise WebhookError(f"{exc} (the report itself is written to {out})") from exc
        cli.err.print("summary posted to the webhook")
