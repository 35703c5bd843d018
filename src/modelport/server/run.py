"""Run a server: what `modelport serve` calls."""

from __future__ import annotations

import errno
import logging
import math
import signal
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
        run_until_signal(server, sock)
    finally:
        sock.close()
        registry.close()


def run_until_signal(server: uvicorn.Server, sock: socket.socket) -> None:
    """Run `server` on `sock`; a SIGTERM that it drained ends the process with exit 0.

    uvicorn re-raises the signal that stopped it once it has shut down, under the
    handler it found when it started: a no-op one turns a drained SIGTERM (what
    Kubernetes, systemd and `docker stop` send) into a clean exit instead of 143,
    which a supervisor reads as a failure. Ctrl-C stays a KeyboardInterrupt."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
