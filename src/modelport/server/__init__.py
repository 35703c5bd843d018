"""The HTTP server: thin adapters over the data plane.

Public: `__all__`: the app factory, the JSON response and body reader its routes use
(for an application's own routes), and what runs it under uvicorn as `modelport serve`
does (`listen`, `DrainingHttpToolsProtocol`, `sigterm_exits_cleanly`), loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelport.server.app import create_app
from modelport.server.responses import JSON, read_json

if TYPE_CHECKING:
    from modelport.server.protocol import DrainingHttpToolsProtocol
    from modelport.server.run import listen, sigterm_exits_cleanly

_LAZY = {
    "DrainingHttpToolsProtocol": "modelport.server.protocol",
    "listen": "modelport.server.run",
    "sigterm_exits_cleanly": "modelport.server.run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modelport.server' has no attribute {name!r}")


__all__ = ["JSON", "DrainingHttpToolsProtocol", "create_app", "listen", "read_json",
           "sigterm_exits_cleanly"]
