"""The HTTP server: thin adapters over the data plane."""

from modelport.server.app import create_app

__all__ = ["create_app"]
