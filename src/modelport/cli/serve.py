"""`modelport serve`: serve registered models over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelport.cli.context import state
from modelport.config import ServiceConfig, load_config
from modelport.dataplane import ModelConfig
from modelport.errors import ConfigError
from modelport.registry import parse_ref
from modelport.settings import environment


def serve(
    ctx: typer.Context,
    refs: Annotated[list[str] | None, typer.Argument(
        help="Models to serve: NAME@ALIAS follows the alias, NAME:VERSION pins one.",
        show_default=False)] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="A service's modelport.yaml (models, batching, …).",
        show_default=False)] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.",
                                             show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.",
                                             show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes per model, for models that hold the GIL (default: "
             "on the event loop or in a thread, as each model's timing at load says).",
        show_default=False)] = None,
    trusted: Annotated[bool, typer.Option(
        help="Allow artifacts that run code when loaded (pickle, python models).")] = False,
) -> None:
    """Serve models: Open Inference Protocol v2 and a JSON API, with /docs and /metrics."""
    from modelport.server.example import base_url, curl_command
    from modelport.server.run import listen
    from modelport.server.run import serve as run_server
    from modelport.service import Service

    cli = state(ctx)
    service = load_config(config, environment()) if config else ServiceConfig()
    for ref in refs or []:
        parse_ref(ref)  # a bad reference fails here, in one line
        service.models.append(ModelConfig(ref=ref, trusted=trusted))
    if not service.models and not service.pipelines:
        raise ConfigError("nothing to serve: name models (NAME@ALIAS or NAME:VERSION) "
                          "or pass --config modelport.yaml")
    if workers is not None:
        for model in service.models:
            if workers and model.on_loop is True:
                raise ConfigError(f"--workers {workers}: model {model.served_name} runs on "
                                  "the event loop (on_loop: true), not in worker processes")
            model.workers = workers
    server = cli.settings.server.model_copy(update={
        k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    settings = cli.settings.model_copy(update={"server": server})
    sock = listen(server.host, server.port)
    url = base_url(server.host, server.port)

    def ready(started: Service) -> None:
        cli.err.print(f"serving {', '.join(m.ref for m in service.models)} on {url}  "
                      "(docs: /docs, metrics: /metrics)", soft_wrap=True)
        for name, endpoint in started.dataplane.endpoints.items():
            if endpoint.current is not None:
                cli.err.print(f"  try: {curl_command(url, name, endpoint.current.model.signature)}",
                              soft_wrap=True, markup=False, highlight=False)

    run_server(settings, service, sock, on_ready=ready)
