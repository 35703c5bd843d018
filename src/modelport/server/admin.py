"""The admin API: look at the registry, move and roll back aliases, refresh the server.

Every route here needs a key with the `admin` scope (checked by `server.auth` before
the request gets this far); the key's name is recorded as the actor of alias moves.
Registry calls block on SQL, so they run in a thread, off the event loop that is
serving predictions.

Moving an alias changes the registry, which every replica polls; `POST
/admin/refresh` makes this one look now instead of at its next poll.

`POST …/promote` gates a version and moves the alias; with a guard, this server
watches the version's live metrics (from every replica, through the prediction log)
in a thread until the window ends, and rolls back on a breach. `GET /admin/guards`
shows them. A guard lives as long as the server that runs it.
`/admin/traffic` shows and changes the traffic policies (shadow, canary) of the served
models, in this server process: a change lasts until it stops (modelport.yaml's
policies apply again at the next start).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.errors import InvalidInput
from modelport.promotion import Guard
from modelport.promotion import promote as promote_version
from modelport.registry import ModelVersion
from modelport.registry.store import AliasEvent
from modelport.server.responses import JSON, read_json
from modelport.server.state import dataplane
from modelport.traffic import TrafficPolicy

REASON_MAX = 1000


async def list_models(request: Request) -> Response:
    models = await asyncio.to_thread(dataplane(request).registry.list_models)
    return JSON({"models": models})


async def show_model(request: Request) -> Response:
    name = request.path_params["name"]
    versions = await asyncio.to_thread(dataplane(request).registry.list_versions, name)
    aliases = {a: v.version for v in versions for a in v.aliases}
    return JSON({"name": name, "aliases": aliases, "versions": [_version(v) for v in versions]})


async def alias_history(request: Request) -> Response:
    name, alias = request.path_params["name"], request.path_params["alias"]
    events = await asyncio.to_thread(dataplane(request).registry.alias_history, name, alias)
    return JSON({"name": name, "alias": alias, "events": [_event(e) for e in events]})


async def set_alias(request: Request) -> Response:
    """`{"version": N, "reason": "…"}`: point the alias at version N."""
    name, alias = request.path_params["name"], request.path_params["alias"]
    body = _object(await read_json(request), {"version", "reason"})
    version = body.get("version")
    # bool is an int in Python; `true` is not a version
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInput("'version' is required: a positive integer, as in "
                           '{"version": 3}')
    previous = await asyncio.to_thread(
        dataplane(request).registry.set_alias, name, alias, version,
        reason=_reason(body), actor=_actor(request))
    return JSON({"name": name, "alias": alias, "version": version, "previous": previous})


async def remove_alias(request: Request) -> Response:
    """Remove the alias; an optional `?reason=` is recorded."""
    name, alias = request.path_params["name"], request.path_params["alias"]
    # DELETE bodies are dropped by some clients and proxies: the reason is a parameter
    reason = _reason({"reason": request.query_params.get("reason")})
    previous = await asyncio.to_thread(
        dataplane(request).registry.remove_alias, name, alias,
        reason=reason, actor=_actor(request))
    return JSON({"name": name, "alias": alias, "version": None, "previous": previous})


async def rollback(request: Request) -> Response:
    """Move the alias back to where it pointed before its last move; body optional."""
    name, alias = request.path_params["name"], request.path_params["alias"]
    body = _object(await read_json(request), {"reason"}) if await request.body() else {}
    record = await asyncio.to_thread(
        dataplane(request).registry.rollback, name, alias,
        reason=_reason(body), actor=_actor(request))
    return JSON({"name": name, "alias": alias, "version": record.version})


async def promote(request: Request) -> Response:
    """`{"version": N, "gate": "auc>=production", "guard": "error_rate<1%",
    "window": "10m", "min_requests": 10, "reason": "…"}`: all but version optional.

    A gate that refuses answers 409 (and is recorded); with a guard, the answer says
    what it watches, and `GET /admin/guards` what it decided."""
    name, alias = request.path_params["name"], request.path_params["alias"]
    body = _object(await read_json(request),
                   {"version", "gate", "guard", "window", "min_requests", "reason"})
    version = _positive(body, "version", required=True)
    assert version is not None
    for key in ("gate", "guard", "window"):
        if body.get(key) is not None and not isinstance(body[key], str | int | float):
            raise InvalidInput(f"'{key}' must be a string")
    p = await asyncio.to_thread(
        promote_version, dataplane(request).registry, name, version, alias=alias,
        gate=body.get("gate"), guard=body.get("guard"), window=body.get("window"),
        min_requests=_positive(body, "min_requests") or 10, reason=_reason(body),
        actor=_actor(request))
    answer: dict[str, Any] = {"name": name, "alias": alias, "version": version,
                              "previous": p.previous, "moved": p.moved}
    if p.verdict is not None:
        answer["gate"] = {"verdict": p.verdict.word, "reason": p.verdict.reason}
        if not p.verdict.passed:
            return JSON(answer, status_code=409)
    if p.guard is not None:
        guards(request).start(p.guard)
        answer["guard"] = _guard(p.guard)
    return JSON(answer)


async def list_guards(request: Request) -> Response:
    return JSON({"guards": [_guard(g) for g in guards(request).all]})


async def served(request: Request) -> Response:
    ready, detail = dataplane(request).readiness()
    return JSON({"ready": ready, "models": detail})


async def refresh(request: Request) -> Response:
    """Check the registry now; answers what is served afterwards (with any load error)."""
    dp = dataplane(request)
    await dp.refresh(force=True)
    ready, detail = dp.readiness()
    return JSON({"ready": ready, "models": detail})


async def show_traffic(request: Request) -> Response:
    return JSON({"models": dataplane(request).traffic()})


async def set_traffic(request: Request) -> Response:
    """`{"shadow": …, "canary": …}`: set what the body names (null removes it), keep
    the rest; the policy's models are loaded before it applies (409 if one fails)."""
    dp, name = dataplane(request), request.path_params["name"]
    body = _object(await read_json(request), {"shadow", "canary"})
    current = dp.endpoint(name).policy.model_dump(exclude_none=True)
    try:
        policy = TrafficPolicy.model_validate({**current, **body})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{where}: {first['msg']}") from None
    await dp.set_traffic(name, policy)
    return JSON({"model": name, **dp.traffic()[name]})


async def clear_traffic(request: Request) -> Response:
    """Remove the model's shadow and canary: every call is the primary's again."""
    dp, name = dataplane(request), request.path_params["name"]
    await dp.set_traffic(name, TrafficPolicy())
    return JSON({"model": name, **dp.traffic()[name]})


# --- helpers --------------------------------------------------------------------------


class Guards:
    """The guards this server runs, each in a thread; stopped with the server."""

    def __init__(self) -> None:
        self.all: list[Guard] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, guard: Guard) -> None:
        self.all.append(guard)
        task = asyncio.create_task(asyncio.to_thread(guard.watch), name="guard")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for guard in self.all:
            guard.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def guards(request: Request) -> Guards:
    found: Guards = request.app.state.guards
    return found


def _guard(g: Guard) -> dict[str, Any]:
    r = g.result
    return {"name": g.name, "alias": g.alias, "version": g.version,
            "bounds": ",".join(str(b) for b in g.bounds), "window_s": g.window_s,
            "outcome": r.outcome, "reason": r.reason, "values": r.values,
            "rolled_back_to": r.rolled_back_to}


def _positive(body: dict[str, Any], key: str, *, required: bool = False) -> int | None:
    value = body.get(key)
    if value is None and not required:
        return None
    # bool is an int in Python; `true` is not a version
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInput(f"'{key}' {'is required: ' if required else 'must be '}a positive "
                           f'integer, as in {{"{key}": 3}}')
    return value



def _actor(request: Request) -> str | None:
    name: str | None = getattr(request.state, "api_key", None)
    return name


def _object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput(f"expected a JSON object with {', '.join(sorted(allowed))}")
    unknown = sorted(set(body) - allowed)
    if unknown:  # a typo ("versoin") must not pass as a request without that field
        raise InvalidInput(f"unknown field(s) {', '.join(repr(k) for k in unknown)}; "
                           f"expected {', '.join(sorted(allowed))}")
    return body


def _reason(body: dict[str, Any]) -> str | None:
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > REASON_MAX):
        raise InvalidInput(f"'reason' must be a string of at most {REASON_MAX} characters")
    return reason or None


def _version(v: ModelVersion) -> dict[str, Any]:
    return {"version": v.version, "flavor": v.flavor, "metrics": v.metrics,
            "params": v.params, "tags": v.tags, "created_at": v.created_at.isoformat(),
            "created_by": v.created_by, "aliases": v.aliases, "sha256": v.sha256,
            "size": v.size}


def _event(e: AliasEvent) -> dict[str, Any]:
    return {"kind": e.kind, "from_version": e.from_version, "to_version": e.to_version,
            "at": e.at.isoformat(), "actor": e.actor, "reason": e.reason}


_ALIAS = "/admin/models/{name}/aliases/{alias}"

routes = [
    Route("/admin/models", list_models, methods=["GET"]),
    Route("/admin/models/{name}", show_model, methods=["GET"]),
    Route(_ALIAS, set_alias, methods=["PUT"]),
    Route(_ALIAS, remove_alias, methods=["DELETE"]),
    Route(_ALIAS + "/history", alias_history, methods=["GET"]),
    Route(_ALIAS + "/rollback", rollback, methods=["POST"]),
    Route(_ALIAS + "/promote", promote, methods=["POST"]),
    Route("/admin/guards", list_guards, methods=["GET"]),
    Route("/admin/served", served, methods=["GET"]),
    Route("/admin/refresh", refresh, methods=["POST"]),
    Route("/admin/traffic", show_traffic, methods=["GET"]),
    Route("/admin/traffic/{name}", set_traffic, methods=["PATCH"]),
    Route("/admin/traffic/{name}", clear_traffic, methods=["DELETE"]),
]
