"""Pure ASGI middleware that checks API keys before a request reaches a route.

Which scope a request needs is decided from its path alone, so a request that needs
none (every prediction, while `require_predict_key` is off) pays for two string
tests and nothing else:

- `/admin…` always needs a key with the `admin` scope;
- with `require_predict_key`, every other path needs `predict`, except the open ones
  below. Deny by default: a route added later (`/pipelines/…`, v2 inference, model
  metadata) is protected without anyone remembering to list it here;
- open always: `/`, `/docs`, `/openapi.json`, `/metrics`, `/v2` (server
  metadata), `/v2/health/…` (probes carry no keys) and `/docs/assets/…` (the docs' own
  scripts and styles).

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. The name of the
key that passed is put in the request state as `api_key`, for the audit trail.
"""

from __future__ import annotations

# The router's own function for the path it matches routes against (the path less
# the root_path). Deciding on any other string could let a path the router treats as
# /admin/… through the guard as something else: same function, same decision.
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport.errors import Forbidden, Unauthorized
from modelport.security import KeyStore
from modelport.server.responses import error_response

OPEN = frozenset({"/", "/docs", "/docs/oauth2-redirect", "/openapi.json",
                  "/metrics", "/v2"})
OPEN_PREFIXES = ("/v2/health/", "/docs/assets/")
ADMIN_PREFIX = "/admin"


def required_scope(path: str, require_predict_key: bool) -> str | None:
    """The scope a request for `path` (as the router sees it) needs, or None."""
    # a prefix without the slash: "/admin", "/admin/…", and "/adminx" too; the
    # last is a 404 anyway, better a 401 first than an open door to a future route
    if path.startswith(ADMIN_PREFIX):
        return "admin"
    if not require_predict_key or path in OPEN or path.startswith(OPEN_PREFIXES):
        return None
    return "predict"


class ApiKeyGuard:
    """401 without a valid key, 403 with a key that lacks the scope the path needs."""

    def __init__(self, app: ASGIApp, keys: KeyStore, require_predict_key: bool) -> None:
        self.app = app
        self.keys = keys
        self.require_predict_key = require_predict_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        needed = required_scope(get_route_path(scope), self.require_predict_key)
        if needed is None:
            await self.app(scope, receive, send)
            return
        error = self._check(scope, needed)
        if error is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":  # no websocket routes yet: fail closed anyway
            await send({"type": "websocket.close", "code": 1008})
        else:
            response = error_response(error)
            if isinstance(error, Unauthorized):
                response.headers["www-authenticate"] = _challenge(error)
            await response(scope, receive, send)

    def _check(self, scope: Scope, needed: str) -> Unauthorized | Forbidden | None:
        presented = presented_key(scope)
        if presented is None:
            hint = "" if len(self.keys) else \
                " (this server has no API keys: set server.api_keys_file)"
            return Unauthorized(f"this route needs an API key with the {needed!r} scope: "
                                f"send 'Authorization: Bearer <key>' or 'X-API-Key'{hint}")
        key = self.keys.authenticate(presented)
        if key is None:
            return _InvalidKey("the API key is not valid")
        if not key.allows(needed):
            return Forbidden(f"API key {key.name!r} lacks the {needed!r} scope")
        scope.setdefault("state", {})["api_key"] = key.name
        return None


class _InvalidKey(Unauthorized):
    """A key was sent and is wrong (RFC 6750 calls for `error="invalid_token"`)."""


def _challenge(error: Unauthorized) -> str:
    return 'Bearer error="invalid_token"' if isinstance(error, _InvalidKey) else "Bearer"


def presented_key(scope: Scope) -> str | None:
    """The key from `Authorization: Bearer …` or else `X-API-Key`, or None."""
    bearer = api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key" and value.strip():
            api_key = value.decode("latin-1").strip()
    return bearer or api_key
