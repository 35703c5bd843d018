"""`music up`, `music serve ROLE`, `music setup` and `music nightly`: running the system.

- `music up`: everything in one process on http://127.0.0.1:8000 (embedded: SQLite,
  the registry under `.modelport/`, an in-process bus), after generating data, loading
  the tables, training and gating a model and running the nightly batch, each only if
  not done yet. `music up --full` does the same setup on PostgreSQL, Redis and NATS,
  then starts one process per service (`music serve …`).
- `music serve recommender|events|worker`: one service of the full setup, as
  Kubernetes or docker compose run them (deploy/).
- `music setup`: the setup alone (a Kubernetes Job before the services start).
- `music nightly [--cron EXPR]`: the nightly batch, once or on a schedule.
- `music report`: the daily modelport report of the recommender (`modelport report`
  over the system's registry and prediction log).

URLs come from options or the `MUSIC_*` variables their help names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from modelport import configure_logging

from music.system import System

Home = Annotated[Path, typer.Option(help="Where local state lives (registry, data, SQLite).",
                                    envvar="MODELPORT_HOME")]
Database = Annotated[str | None, typer.Option(
    "--database", envvar="MUSIC_DATABASE_URL", show_default=False,
    help="SQL database of the system (full mode: postgresql://…).")]
RedisUrl = Annotated[str | None, typer.Option(
    "--redis", envvar="MUSIC_REDIS_URL", show_default=False,
    help="Redis for histories and the nightly top-k (full mode).")]
BrokerUrl = Annotated[str | None, typer.Option(
    "--broker", envvar="MUSIC_BROKER_URL", show_default=False,
    help="Listens stream: nats://… (JetStream) or redis://… (Redis Streams) (full mode).")]
RegistryUrl = Annotated[str | None, typer.Option(
    "--registry", envvar="MODELPORT_REGISTRY_URL", show_default=False,
    help="Registry database (default: a SQLite file under --home).")]
Prefix = Annotated[str, typer.Option(help="Prefix of every table, Redis key and stream.")]
Host = Annotated[str, typer.Option(help="Address to listen on.")]

FULL_DEFAULTS = {"database": "postgresql://postgres@127.0.0.1:5432/postgres",
                 "redis": "redis://127.0.0.1:6379/0", "broker": "nats://127.0.0.1:4222"}


def register(app: typer.Typer) -> None:
    """Add the commands to the `music` command."""
    app.command(name="up")(up)
    app.command(name="serve")(serve)
    app.command(name="setup")(setup)
    app.command(name="nightly")(nightly_cmd)
    app.command(name="report")(report_cmd)


def make_system(home: Path, database: str | None, redis: str | None, broker: str | None,
                registry: str | None, prefix: str, *, full: bool) -> System:
    if not full:
        return System(home=home, db_url=database, registry_url=registry, prefix=prefix)
    database = database or FULL_DEFAULTS["database"]
    # replicas of a service share one registry: the system's database unless told
    return System.full(database, redis or FULL_DEFAULTS["redis"],
                       broker or FULL_DEFAULTS["broker"], home=home,
                       registry_url=registry or database, prefix=prefix)


def up(
    home: Home = Path(".modelport"),
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the web page and the APIs.")] = 8000,
    full: Annotated[bool, typer.Option(
        "--full", help="PostgreSQL, Redis and NATS, one process per service.")] = False,
    retrain: Annotated[bool, typer.Option(help="Train (and gate) a new model even if one "
                                          "is in production.")] = False,
    users: Annotated[int, typer.Option(min=10, help="Listeners to generate.")] = 5_000,
    listens: Annotated[int, typer.Option(min=100, help="Listens to generate.")] = 1_000_000,
    database: Database = None, redis: RedisUrl = None, broker: BrokerUrl = None,
    registry: RegistryUrl = None, prefix: Prefix = "music_",
    workers: Annotated[int, typer.Option(
        min=1, help="Processes serving requests, as a Python process computes on one core "
        "at a time: embedded, each runs the whole system (sharing the SQLite file, the "
        "nightly jobs in one of them); --full, the recommender's.")] = 1,
) -> None:
    """Set everything up (what is missing) and run the whole system."""
    from modelport.server import listen

    from music.data import Config

    configure_logging(json=False, access_log=False)
    # a port in use is said at once, not after the setup; the full mode's services
    # and several workers bind their own sockets, so theirs are only checked here
    with contextlib.ExitStack() as bound:
        for p in [port, port + 1, port + 2] if full else [port]:
            sock = bound.enter_context(listen(host, p))
        if not full and workers == 1:
            bound.pop_all()  # served on below
    system = make_system(home, database, redis, broker, registry, prefix, full=full)
    run_setup(system, Config(users=users, listens=listens), retrain=retrain)
    url = f"http://{host}:{port}"
    if full:
        _run_full(system, host, port, workers=workers)
        return
    from music.app import ROLES, ServeSpec, build_app

    typer.secho(f"\n  music is up: open {url}\n", fg=typer.colors.GREEN, bold=True)
    typer.echo(f"  recommendations  curl '{url}/users/u0042/recommendations?k=10'\n"
               f"  play a track     curl -X POST {url}/listens -H 'content-type: "
               "application/json' -d '{\"user\": \"u0042\", \"track\": \"t00001\"}'\n"
               f"  API docs         {url}/docs     metrics {url}/metrics\n"
               "  stop             Ctrl-C\n")
    if workers == 1:
        run_server(build_app(system), host, port, sock=sock)
        return
    # each process runs every service, its events reaching its own realtime worker
    # over its own in-process bus; histories and listens meet in the shared SQLite file
    ServeSpec(system, list(ROLES), json_logs=False, access_log=False).export()
    run_server("music.app:serve_app_from_env", host, port, workers=workers)


def run_setup(system: System, config: Any = None, *, retrain: bool = False) -> None:
    from music import bootstrap

    data = bootstrap.ensure_data(system, config)
    bootstrap.ensure_tables(system, data)
    bootstrap.ensure_model(system, data, retrain=retrain)
    asyncio.run(bootstrap.ensure_topk(system))


def setup(
    home: Home = Path(".modelport"),
    database: Database = None, redis: RedisUrl = None, broker: BrokerUrl = None,
    registry: RegistryUrl = None, prefix: Prefix = "music_",
    full: Annotated[bool, typer.Option("--full", help="PostgreSQL, Redis and NATS.")] = False,
    retrain: Annotated[bool, typer.Option(help="Train even if a model serves.")] = False,
) -> None:
    """Prepare the system (data, tables, model, nightly batch: what is missing), then exit."""
    configure_logging(json=False, access_log=False)
    run_setup(make_system(home, database, redis, broker, registry, prefix, full=full),
              retrain=retrain)


def serve(
    role: Annotated[str, typer.Argument(help="recommender, events or worker.")],
    home: Home = Path(".modelport"),
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (the worker's: health and metrics).")] = 8000,
    events_url: Annotated[str, typer.Option(
        help="recommender: where the web page posts listens (the events service).")] = "",
    database: Database = None, redis: RedisUrl = None, broker: BrokerUrl = None,
    registry: RegistryUrl = None, prefix: Prefix = "music_",
    consumer: Annotated[str, typer.Option(
        help="worker: its consumer name (keep it across restarts).")] = "realtime-1",
    json_logs: Annotated[bool, typer.Option(help="Logs as JSON lines.")] = True,
    workers: Annotated[int, typer.Option(
        min=1, help="recommender, events: processes sharing the port (stateless "
        "services use more than one core this way).")] = 1,
) -> None:
    """Run one service of the full setup (PostgreSQL, Redis, NATS or Redis Streams)."""
    from music.app import ServeSpec, serve_app

    if role not in ("recommender", "events", "worker"):
        raise typer.BadParameter(f"{role!r}: the services are recommender, events and worker")
    if role == "worker" and workers > 1:
        raise typer.BadParameter("run more workers as more processes (each with its own "
                                 "--consumer), not --workers")
    system = make_system(home, database, redis, broker, registry, prefix, full=True)
    system.consumer = consumer
    spec = ServeSpec(system, [role], events_url, json_logs, access_log=role != "worker")
    if workers == 1:
        run_server(serve_app(spec), host, port)
    else:
        spec.export()  # each worker process builds its own app from it
        run_server("music.app:serve_app_from_env", host, port, workers=workers)


def nightly_cmd(
    home: Home = Path(".modelport"),
    cron: Annotated[str | None, typer.Option(
        help="Run on this schedule (e.g. '0 3 * * *'), for ever, with the nightly "
             "retraining at 02:00 UTC; default: the batch once.",
        show_default=False)] = None,
    database: Database = None, redis: RedisUrl = None, broker: BrokerUrl = None,
    registry: RegistryUrl = None, prefix: Prefix = "music_",
    full: Annotated[bool, typer.Option("--full", help="PostgreSQL and Redis.")] = False,
) -> None:
    """Precompute every user's top-k (the recommender's fallback)."""
    from music.nightly import run_nightly, scheduler

    configure_logging(json=False, access_log=False)
    system = make_system(home, database, redis, broker, registry, prefix, full=full)
    if cron:
        asyncio.run(scheduler(system, cron=cron, report_cron=None).run_forever())
        return
    result = asyncio.run(run_nightly(system))
    typer.echo(f"nightly batch: {result.written:,} users written, {result.rejected:,} "
               f"rejected in {result.seconds:.1f}s")


def report_cmd(
    home: Home = Path(".modelport"),
    since: Annotated[str, typer.Option(help="The window: 24h, 7d, or an ISO time.")] = "24h",
    out: Annotated[Path | None, typer.Option(
        help="HTML file (default: <home>/music/reports/report-<date>.html).",
        show_default=False)] = None,
    registry: RegistryUrl = None,
) -> None:
    """The daily modelport report of the recommender: traffic, latency, outputs, versions
    and their metrics, drift of the histories it was asked with."""
    from modelport.jobs import generate, window

    from music.nightly import report_path
    from music.system import MODEL

    system = make_system(home, None, None, None, registry, "music_", full=False)
    start, end = window(since)
    path = out or Path(str(report_path(system)).format(until=end))
    report = generate(system.settings(), start, end, path, model=MODEL)
    typer.echo(f"wrote {path}\n{report.summary(path)['text']}")


def run_server(app: Any, host: str, port: int, *, workers: int = 1,
               sock: socket.socket | None = None) -> None:
    """Serve `app` (an ASGI app, or with `workers` > 1 the import string of a factory
    building it in each process), on `sock` when it is bound already."""
    if workers > 1:
        from music import workers as processes

        raise typer.Exit(processes.run(app, host, port, workers))
    import uvicorn
    from modelport.server import DrainingHttpToolsProtocol, listen, sigterm_exits_cleanly

    sock = sock or listen(host, port)
    server = uvicorn.Server(uvicorn.Config(
        app, loop="uvloop", http=DrainingHttpToolsProtocol, log_config=None, access_log=False,
        timeout_graceful_shutdown=math.ceil(10), backlog=2048, log_level=logging.WARNING))
    try:
        with sigterm_exits_cleanly():
            server.run(sockets=[sock])
    finally:
        sock.close()


def _run_full(system: System, host: str, port: int, *, workers: int = 1) -> None:
    """One process per service; SIGTERM or Ctrl-C stops them all (exit 0), and one
    stopping on its own stops the others (exit 1)."""
    assert system.db_url is not None
    assert system.redis_url is not None
    assert system.broker_url is not None
    common = ["--home", str(system.home), "--database", system.db_url, "--redis",
              system.redis_url, "--broker", system.broker_url, "--prefix", system.prefix,
              "--registry", system.registry_url or system.database, "--host", host,
              "--no-json-logs"]
    music = [sys.executable, "-m", "music"]
    plan = {
        "recommender": [*music, "serve", "recommender", "--port", str(port),
                        "--events-url", f"http://{host}:{port + 1}",
                        "--workers", str(workers), *common],
        "events": [*music, "serve", "events", "--port", str(port + 1), *common],
        "worker": [*music, "serve", "worker", "--port", str(port + 2), *common],
    }
    # SIGTERM (docker stop, systemd, Kubernetes) and Ctrl-C both stop every child:
    # without a handler, SIGTERM would end this process alone and leave the services
    # running with parent 1
    from music.workers import GRACE_S

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    children = {name: subprocess.Popen(cmd) for name, cmd in plan.items()}
    typer.secho(f"\n  music is up (full mode): open http://{host}:{port}\n"
                f"  events on :{port + 1}, realtime worker on :{port + 2} (health, metrics)\n"
                "  nightly batch: music nightly --full (a CronJob in deploy/)\n",
                fg=typer.colors.GREEN, bold=True)
    try:
        while not stop.wait(0.5) and all(c.poll() is None for c in children.values()):
            pass
        if not stop.is_set():
            dead = [n for n, c in children.items() if c.poll() is not None]
            typer.secho(f"{', '.join(dead)} stopped; stopping the others", fg=typer.colors.RED)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # each drains its requests, then exits
        for child in children.values():
            try:
                child.wait(timeout=GRACE_S + 5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not stop.is_set():
        raise typer.Exit(1)
