"""What every `modelport` command shares: the settings, the consoles, the registry.

`main()` builds the settings once and the top-level callback turns them, with the global
options applied, into a `CliState` on the Typer context; commands ask for it with
`state(ctx)`, open the registry with `state(ctx).registry()` and read the service they
run with `load_service_config(path, pipeline=…)`: a command parses its arguments and loads a
`Service`; the triggers (server, stream runner, batch jobs, scheduler) do the rest.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.text import Text

from modelport.errors import ConfigError, NotFound
from modelport.settings import Settings, environment

if TYPE_CHECKING:
    from modelport.config import ServiceConfig
    from modelport.registry import Registry


@dataclass
class CliState:
    """The settings (global options applied) and the two consoles of one invocation."""

    settings: Settings
    out: Console = field(default_factory=lambda: Console(soft_wrap=False))
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))

    @contextlib.contextmanager
    def registry(self) -> Iterator[Registry]:
        """The registry the settings point at, closed when the command is done."""
        from modelport.registry import Registry

        reg = Registry(settings=self.settings)
        try:
            yield reg
        finally:
            reg.close()

    def json(self, data: Any) -> None:
        """Print `data` as JSON on stdout, plain (no colour, no wrapping) for scripts."""
        typer.echo(json.dumps(data, indent=2, default=_json_default, ensure_ascii=False))

    def error(self, message: str) -> None:
        """One red line on stderr, whatever `message` holds (markup is not interpreted)."""
        self.err.print(Text(f"error: {one_line(message)}", style="bold red"))


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):
        raise ConfigError("the modelport command was invoked without its settings")
    return obj


def load_service_config(path: Path, *, pipeline: str | None = None) -> ServiceConfig:
    """The service `path` describes (`${ENV}` filled from the environment); with
    `pipeline`, just that pipeline and its model, so that nothing else loads."""
    from modelport.config import load_config

    config = load_config(path, environment())
    if pipeline is None:
        return config
    wanted = next((p for p in config.pipelines if p.name == pipeline), None)
    if wanted is None:
        names = ", ".join(p.name for p in config.pipelines) or "none"
        raise NotFound(f"no pipeline named {pipeline!r} in {path} (pipelines: {names})")
    return config.model_copy(update={
        "pipelines": [wanted], "models": [m for m in config.models if m.ref == wanted.model]})


def one_line(message: str) -> str:
    """Collapse whitespace so that a multi-line message still prints as one line."""
    return " ".join(str(message).split())


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return str(value)


def human_size(size: int) -> str:
    amount = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if amount < 1000 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    raise AssertionError("unreachable")


def when(moment: datetime) -> str:
    """A timestamp in UTC (the registry stores UTC; SQLite hands it back naive)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
