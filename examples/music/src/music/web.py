"""The web page and the JSON it reads besides the recommender's own routes.

The page is plain HTML, CSS and JavaScript under `music/static/` (no build step): it
lists users, shows one's history and recommendations, posts a listen when a track is
played, and shows the model in service with its metrics from the registry.
"""

from __future__ import annotations

import asyncio
import html
from importlib import resources
from typing import Any

from modelport import NotFound, Registry
from modelport.server import JSON
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from music.store import Store
from music.system import MODEL

STATIC = resources.files("music") / "static"
SHOWN_METRICS = ("recall@10", "ndcg@10", "coverage@10", "baseline_recall@10", "users",
                 "genre_share@10", "genre_catalog_share")


async def page(request: Request) -> Response:
    text = (STATIC / "index.html").read_text()
    # where the page posts listens: this server, or the events service's own address
    events_url = html.escape(request.app.state.events_url or "", quote=True)
    return HTMLResponse(text.replace("{{EVENTS_URL}}", events_url),
                        headers={"cache-control": "no-store"})


async def users(request: Request) -> Response:
    store: Store = request.app.state.store
    query = request.query_params.get("q", "").strip()[:64]
    found = await asyncio.to_thread(store.users, query, 12)
    return JSON({"users": found})


async def model(request: Request) -> Response:
    """The version serving now, its metrics and the gate's word, and the versions
    before it (newest first), read from the registry."""
    registry: Registry = request.app.state.registry
    ready, detail = request.app.state.dataplane.readiness()
    serving = detail.get(MODEL, {}).get("version")
    alias = request.app.state.system.alias
    versions, production = await asyncio.to_thread(_versions, registry, alias)
    return JSON({"name": MODEL, "alias": alias, "serving": serving, "ready": ready,
                 "production": production, "versions": versions,
                 "fallbacks": request.app.state.recommender.fallbacks})


def _versions(registry: Registry, alias: str,
              limit: int = 6) -> tuple[list[dict[str, Any]], int | None]:
    try:
        records = registry.list_versions(MODEL)
    except NotFound:
        return [], None
    try:
        production: int | None = registry.get_alias(MODEL, alias)
    except NotFound:
        production = None
    out = []
    for mv in sorted(records, key=lambda v: v.version, reverse=True)[:limit]:
        out.append({
            "version": mv.version,
            "created_at": str(mv.created_at),
            "metrics": {k: mv.metrics[k] for k in SHOWN_METRICS if k in mv.metrics},
            "params": {k: v for k, v in mv.params.items()
                       if k in ("factors", "regularization", "alpha", "iterations")},
            "gate": mv.tags.get("gate"),
            "gate_reason": mv.tags.get("gate_reason"),
        })
    return out, production


async def report(request: Request) -> Response:
    """The modelport report of the recommender over the last `since` (default 24h),
    made on demand: traffic, latency, outputs, versions, drift."""
    from modelport.jobs import generate, window

    since = request.query_params.get("since", "24h")
    start, end = window(since)  # a bad window is a 400 naming it
    path = request.app.state.system.data_dir / "reports" / "latest.html"
    await asyncio.to_thread(generate, request.app.state.settings, start, end, path, model=MODEL)
    return HTMLResponse(path.read_text(), headers={"cache-control": "no-store"})


routes = [
    Route("/", page, methods=["GET"], include_in_schema=False),
    Route("/report", report, methods=["GET"], include_in_schema=False),
    Route("/api/users", users, methods=["GET"]),
    Route("/api/model", model, methods=["GET"]),
    Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
]
