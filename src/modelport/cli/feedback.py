"""`modelport feedback`: load ground truth from a file, and read the live quality.

Bulk labels come as a file rather than through a stream pipeline: they usually arrive
as an export (outcomes from a CRM, a warehouse query run days later), a pipeline must
have a model, and the file goes straight to the prediction log's database in
transactions of CHUNK labels, with no server in the way. Exit codes: 0 loaded (the
summary counts the labels whose prediction is not in the log); 1 a bad file (the whole
file is read first, so nothing of it is loaded; the line is named) or an unusable
database; 2 bad usage.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from modelport.cli.context import state
from modelport.errors import InvalidInput

app = typer.Typer(help="Ground truth for predictions, and the live quality it gives.",
                  no_args_is_help=True)

CHUNK = 10_000
"""Labels per transaction."""


@app.command()
def load(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(
        help="Labels: CSV with a header (request_id[,row],label or pipeline,key,label), "
             "JSON lines (one object each, as POST /feedback takes), or a JSON list.",
        exists=True, dir_okay=False)],
) -> None:
    """Store the labels of FILE in the prediction log's database (a label for a
    prediction that has one already replaces it) and print what was stored."""
    from modelport.monitoring.feedback import FeedbackStore, Receipt, parse_item

    cli = state(ctx)
    labels = [parse_item(item, where) for where, item in read_items(path)]
    if not labels:
        raise InvalidInput(f"{path.name} holds no labels")
    store = FeedbackStore.open(cli.settings.resolved_log_url)
    total = Receipt()
    try:
        for start in range(0, len(labels), CHUNK):
            total.add(store.submit(labels[start:start + CHUNK]))
    finally:
        store.close()
    cli.json(total.as_json())


@app.command()
def quality(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model's name.")],
    version: Annotated[int, typer.Option(min=1, help="The version to judge.")],
    metric: Annotated[list[str] | None, typer.Option(
        help="accuracy, auc, mae, rmse, recall@K, ndcg@K (repeatable; default: those of "
             "the version's task).", show_default=False)] = None,
    since: Annotated[str, typer.Option(
        help="Judge predictions logged since: a duration (7d, 24h) or an ISO 8601 "
             "time.")] = "7d",
) -> None:
    """Print the live quality of a version: its logged predictions that have feedback,
    compared with it."""
    from modelport.jobs.report import window
    from modelport.monitoring.feedback import FeedbackStore
    from modelport.monitoring.quality import live_quality, metrics_for

    cli = state(ctx)
    start, _ = window(since)
    if not metric:
        with cli.registry() as reg:
            metric = metrics_for(reg.get_version(model, version))
    store = FeedbackStore.open(cli.settings.resolved_log_url)
    try:
        results = [live_quality(model, version, m, start, log=store) for m in metric]
    finally:
        store.close()
    cli.json([{"model": q.model, "version": q.version, "metric": q.metric,
               "value": q.value, "rows": q.rows} for q in results])


def read_items(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, label object) from a CSV, JSON-lines or JSON file; `where` names the line."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as lines:
            for n, line in enumerate(lines, 1):
                if line.strip():
                    yield f"{path.name}:{n}", _json(line, f"{path.name}:{n}")
    elif suffix == ".json":
        doc = _json(path.read_text(encoding="utf-8"), path.name)
        items = doc.get("feedback") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise InvalidInput(f"{path.name}: expected a list of labels or "
                               '{"feedback": [...]}')
        for i, item in enumerate(items):
            yield f"{path.name}[{i}]", item
    else:
        raise InvalidInput(f"{path.name}: a labels file is .csv, .jsonl, .ndjson or .json")


def _csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for n, row in enumerate(reader, 2):
            where = f"{path.name}:{n}"
            item: dict[str, Any] = {k: v for k, v in row.items() if v not in ("", None)}
            if "label" in item:
                item["label"] = _value(item["label"])
            if "row" in item:
                try:
                    item["row"] = int(item["row"])
                except ValueError:
                    raise InvalidInput(f"{where}.row must be an integer >= 0, got "
                                       f"{item['row']!r}") from None
            yield where, item


def _value(text: str) -> Any:
    """A CSV cell as JSON when it is JSON (1, 0.5, ["a","b"]), else the text (a class)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{where}: not valid JSON: {exc}") from None
