"""Run a server: what `modelport serve` calls."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn
import uvloop

from modelport.config import ServiceConfig
from modelport.errors import ConfigError
from modelport.logs import configure_logging
from modelport.server.app import create_app
from modelport.server.protocol import http_protocol
from modelport.service import Service
from modelport.settings import Settings

log = logging.getLogger("modelport.server")
BACKLOG = 2048


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host:port`, for the server to accept on: taken before
    anything says the server is up, so a port in use is one line, not uvicorn's
    traceback."""
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
    # listening from now: a client that connects once the ready line is out waits in
    # the backlog until the server accepts, instead of being refused
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, config: ServiceConfig, sock: socket.socket | None = None, *,
          on_ready: Callable[[Service], None] | None = None) -> None:
    """Serve `config` until SIGINT/SIGTERM; then drain in-flight requests.

    The service starts before the server accepts a connection: a model that does not
    exist or load, or a pipeline whose tables or services are not there, is a
    `ConfigError` and nothing is served. `on_ready(service)` runs once it has started
    (`modelport serve` prints its address and a request to try). `sock` is the
    listening socket (from `listen`); by default one on the settings' host and port."""
    sock = sock or listen(settings.server.host, settings.server.port)
    configure_logging(json=settings.server.log_json, access_log=settings.server.access_log)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(settings, config, sock, on_ready))
    finally:
        sock.close()


async def _serve(settings: Settings, config: ServiceConfig, sock: socket.socket,
                 on_ready: Callable[[Service], None] | None) -> None:
    service = Service(settings, config)
    await service.start(strict=True)
    app = create_app(service)
    log.info("serving %s on http://%s:%s", ", ".join(m.ref for m in config.models),
             settings.server.host, settings.server.port)
    if on_ready is not None:
        on_ready(service)
    server = uvicorn.Server(uvicorn.Config(
        app,
        http=http_protocol(app.state.admission),
        log_config=None,
        access_log=False,  # our RequestContext middleware writes the access log
        timeout_graceful_shutdown=math.ceil(settings.server.request_timeout_s),
        backlog=BACKLOG,
    ))
    # the app's lifespan stops the service once the server has drained
    with sigterm_exits_cleanly():
        await server.serve(sockets=[sock])


@contextlib.contextmanager
def sigterm_exits_cleanly() -> Iterator[None]:
    """Around a uvicorn server's run: a SIGTERM that it drained ends the process with
    exit 0.

    uvicorn re-raises the signal that stopped it once it has shut down, under the
    handler it found when it started: a no-op one turns a drained SIGTERM (what
    Kubernetes, systemd and `docker stop` send) into a clean exit instead of 143,
    which a supervisor reads as a failure. Ctrl-C stays a KeyboardInterrupt."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
