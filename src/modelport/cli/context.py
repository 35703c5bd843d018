"""What every `modelport` command shares: the settings, the consoles, the registry.

`main()` builds the settings once and the top-level callback turns them, with the global
options applied, into a `CliState` on the Typer context; commands ask for it with
`state(ctx)` and open the registry with `state(ctx).registry()`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.text import Text

from modelport.errors import ConfigError
from modelport.settings import Settings

if TYPE_CHECKING:
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
