"""Several server processes on one port, each with its own listening socket.

uvicorn's `--workers` shares one listening socket between its processes, and whichever
process wakes first accepts every connection waiting: 16 connections opened at once
went 14 to one process and 2 to the other, which left one core idle while requests
queued on the other. Here each process binds its own socket with `SO_REUSEPORT`, and
the kernel spreads new connections over the sockets by a hash of their addresses.

The processes are spawned fresh (not forked: the parent has threads by then) and build
their app from an import string, as uvicorn's own workers do. When one of them stops,
the others are stopped too, and SIGINT/SIGTERM stop them all, each draining its
requests first. Whichever process answers `/metrics` reports them all together.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from types import FrameType

log = logging.getLogger("music.workers")

GRACE_S = 10
"""How long a process may take to finish its requests once asked to stop."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` that other processes may bind too."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock


def serve_one(factory: str, host: str, port: int) -> None:
    """One process: its own socket, the app built by calling `factory` (module:name)."""
    import uvicorn
    from modelport.server import DrainingHttpToolsProtocol

    config = uvicorn.Config(factory, factory=True, loop="uvloop", http=DrainingHttpToolsProtocol,
                            log_config=None, access_log=False, backlog=2048,
                            timeout_graceful_shutdown=math.ceil(GRACE_S),
                            log_level=logging.WARNING)
    uvicorn.Server(config).run(sockets=[listening_socket(host, port)])


def run(factory: str, host: str, port: int, workers: int) -> int:
    """Run `workers` processes of `factory`'s app on `host:port` until one stops or a
    signal comes; returns the exit code to leave with."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise RuntimeError("several processes on one port need SO_REUSEPORT (Linux, BSD)")
    listening_socket(host, port).close()  # fail here, at once, if the port is taken
    spawn = multiprocessing.get_context("spawn")
    children = [spawn.Process(target=serve_one, args=(factory, host, port),
                              name=f"music-worker-{i}") for i in range(workers)]
    # /metrics of any process reports them all (modelport.monitoring.metrics): the
    # children, spawned fresh, find the folder when they import prometheus_client
    metrics_dir = tempfile.mkdtemp(prefix="music-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    stopping = False

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in children:
            child.start()
        while not stopping and all(child.is_alive() for child in children):
            time.sleep(0.2)
        if not stopping:
            dead = [c.name for c in children if not c.is_alive()]
            log.error("%s stopped; stopping the others", ", ".join(dead))
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: uvicorn drains, then exits
        for child in children:
            child.join(timeout=GRACE_S + 5)
            if child.is_alive():
                child.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0 if stopping else 1
