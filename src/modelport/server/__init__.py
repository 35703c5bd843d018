"""The HTTP server: thin adapters over the data plane.

Public: `__all__`: the app factory, the JSON response and body reader its routes use
(for an application's own routes), and what runs it under uvicorn as `modelport serve`
does (`listen`, `DrainingHttpToolsProtocol`, `sigterm_exits_cleanly`), loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelport.lazy import lazy_exports
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


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["JSON", "DrainingHttpToolsProtocol", "create_app", "listen", "read_json",
           "sigterm_exits_cleanly"]
