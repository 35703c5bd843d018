"""The plain JSON API for people: `POST /models/{name}/predict`, and the `/` page."""

from __future__ import annotations

import html
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from modelport.datatypes import jsonable
from modelport.errors import InvalidInput
from modelport.outputs import read_outputs
from modelport.server.example import curl_command
from modelport.server.responses import JSON, read_json
from modelport.server.state import dataplane


async def predict(request: Request) -> Response:
    """`{"instances": [[…], …]}` (rows) or `{"records": [{…}]}` / a bare list of records;
    `"outputs": [names]` computes and answers only those outputs, each by its name."""
    dp = dataplane(request)
    name = request.path_params["name"]
    deployment = dp.deployment(name)  # first: unknown names must not become metric labels
    request.state.model, request.state.route = name, "predict"
    request.state.version = deployment.version
    body = await read_json(request)
    asked = read_outputs(body.get("outputs")) if isinstance(body, dict) else None
    batch = deployment.model.signature.decode(_rows(body))
    outputs, deployment = await dp.answer(
        deployment, batch, source="predict", headers=request.headers, outputs=asked,
        request_id=getattr(request.state, "request_id", None))
    request.state.version = deployment.version  # the canary's, when it answered
    answer: dict[str, Any]
    if asked is not None:  # what was asked, by name
        answer = {key: jsonable(outputs[key]) for key in dict.fromkeys(asked)}
    else:  # the first output as "predictions", then the others by name
        first, *rest = outputs
        answer = {"predictions": jsonable(outputs[first])}
        for key in rest:
            answer[key] = jsonable(outputs[key])
    answer["model"], answer["version"] = name, deployment.version
    return JSON(answer)


def _rows(body: Any) -> Any:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("instances", "records", "inputs"):
            if key in body:
                return body[key]
        raise InvalidInput(
            "expected {\"instances\": [[...], ...]} (rows) or {\"records\": [{...}]} "
            f"(named values); got keys {sorted(body)}"
        )
    raise InvalidInput("expected a JSON object with 'instances' or 'records', or a list")


async def index(request: Request) -> Response:
    dp = dataplane(request)
    ready, detail = dp.readiness()
    rows = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(info['ref'])}</td>"
        f"<td>{info['version'] or '—'}</td><td>{'ready' if info['ready'] else 'not ready'}"
        f"{' — ' + html.escape(info['error']) if info.get('error') else ''}</td>"
        f"<td><a href='/v2/models/{html.escape(name)}'>metadata</a></td></tr>"
        for name, info in detail.items()
    )
    base = str(request.base_url).rstrip("/")
    tries = "".join(
        f"<p>Try {html.escape(name)}:</p><pre>"
        f"{html.escape(curl_command(base, name, ep.current.model.signature))}</pre>"
        for name, ep in dp.endpoints.items() if ep.current is not None)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>modelport</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}
table{{border-collapse:collapse}}
pre{{white-space:pre-wrap;background:#f5f5f5;padding:.6rem}}
td,th{{padding:.4rem .8rem;border-bottom:1px solid #ddd;
text-align:left}}</style></head><body><h1>modelport</h1>
<p>Server {'ready' if ready else 'not ready'}. Interactive API docs: <a href="/docs">/docs</a>
· <a href="/metrics">/metrics</a> · <a href="/v2">/v2</a></p>
<table><tr><th>model</th><th>follows</th><th>version</th><th>status</th><th></th></tr>
{rows}</table>
{tries}</body></html>"""
    return HTMLResponse(page)
