"""The interactive API docs, `/docs` (Swagger UI), served from assets that ship with
the package (the `fastapi-offline` distribution's copy of Swagger UI): they work where
the server cannot reach the internet, and ask nothing of anyone else's host.

There is no `/redoc`: ReDoc's page loads its badge from Redocly's host."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

ASSETS = "/docs/assets"
_OPENAPI = "/openapi.json"
_OAUTH2_REDIRECT = "/docs/oauth2-redirect"


async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=root + _OPENAPI, title="modelport - Swagger UI",
        oauth2_redirect_url=root + _OAUTH2_REDIRECT,
        swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS}/favicon.png")


async def oauth2_redirect(request: Request) -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


def routes() -> list[BaseRoute]:
    assets = Path(str(files("fastapi_offline") / "static"))
    return [
        Route("/docs", swagger_ui, methods=["GET"], include_in_schema=False),
        Route(_OAUTH2_REDIRECT, oauth2_redirect, methods=["GET"], include_in_schema=False),
        Mount(ASSETS, StaticFiles(directory=assets), name="docs-assets"),
    ]
