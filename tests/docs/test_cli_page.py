"""docs/cli.md lists every command `modelport --help` lists, and no other."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from runner import blocks

from modelport.cli import app

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_the_summary_lists_every_command() -> None:
    summary = next(b for b in blocks(PAGE) if b.language == "text")
    listed = re.findall(r"^  (\w+)  ", summary.code, flags=re.MULTILINE)
    group = typer.main.get_group(app)
    assert listed == sorted(listed, key=list(group.commands).index)
    assert set(listed) == set(group.commands)


def test_every_command_has_a_section() -> None:
    headings = [line for line in PAGE.read_text().splitlines() if line.startswith("## ")]
    documented = {" ".join(filter(None, m)) for h in headings
                  for m in re.findall(r"`modelport ([a-z]+)(?: ([a-z]+))?", h)}
    group = typer.main.get_group(app)
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None) or {}
        expected = {f"{name} {sub}" for sub in subcommands} or {name}
        assert expected <= documented, f"docs/cli.md has no section for {expected - documented}"
