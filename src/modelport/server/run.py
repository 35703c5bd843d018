"""Run a server: what `modelport serve` calls."""

from __future__ import annotations

import errno
import logging
import math
import socket

import uvicorn

from modelport.config import ServiceConfig
from modelport.errors import ConfigError
from modelport.logs import configure_logging
from modelport.registry import Registry
from modelport.server.app import create_app
from modelport.service import Service
from modelport.settings import Settings

log = logging.getLogger("modelport.server")


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port`, for the server to accept on: taken before anything
    says the server is up, so a port in use is one line, not uvicorn's traceback."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    # as uvicorn does: a restart may bind while the last run's connections linger
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} is in use; pass --port") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, config: ServiceConfig, sock: socket.socket | None = None) -> None:
    """Serve `config.models` until SIGINT/SIGTERM; then drain in-flight requests.

    `sock` is the listening socket (from `listen`); by default one on the settings'
    host and port."""
    sock = sock or listen(settings.server.host, settings.server.port)
    configure_logging(json=settings.server.log_json, access_log=settings.server.access_log)
    registry = Registry(settings=settings)
    service = Service(settings, config, registry)
    app = create_app(settings, service.dataplane, pipelines=service.pipelines)
    log.info("serving %s on http://%s:%s", ", ".join(m.ref for m in service.config.models),
             settings.server.host, settings.server.port)
    try:
        server = uvicorn.Server(uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
            log_config=None,
            access_log=False,  # our RequestContext middleware writes the access log
            timeout_graceful_shutdown=math.ceil(settings.server.request_timeout_s),
            backlog=2048,
        ))
        server.run(sockets=[sock])
    finally:
        sock.close()
        registry.close()
