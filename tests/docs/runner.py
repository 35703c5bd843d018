"""Runs a markdown page's examples, in order, as a reader would type them.

Every fenced block of a page says, in the words after its language on the opening
fence (GitHub shows only the language), what the test does with it:

- ```` ```bash ```` runs with `bash -euo pipefail` in the page's folder and must exit 0;
  ```` ```bash exit=1 ```` documents a failure and must exit 1.
- ```` ```bash background ```` starts a long-running command (a server, a worker); the
  page goes on once every port the block names (`--port N`, `--metrics-port N`, `:N`)
  accepts connections.
  What it started is stopped when the page ends.
- ```` ```python ```` runs with the environment's Python.
- ```` ```yaml file=modelport.yaml ```` (any language) writes the block to that file.
- ```` ```text ````, ```` ```console ````, ```` ```output ```` and ```` ```json ```` show
  output or a shape; nothing runs them.
- ```` ```bash norun="why" ```` is not run, for the reason given (kept rare: the test
  lists them).

A page runs in a fresh folder with `.venv/bin` first on PATH, against the real
services of this machine. The ports a page documents for its servers, 8000 (and 8001 to
8009 for a page that runs several), may be taken on a shared machine: each page gets a
free port in place of each, in its blocks' text, and the one for 8000 also as
`MODELPORT_SERVER__PORT` (the port `modelport serve` takes by default).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

OUTPUT = {"text", "console", "output", "json", "http", "html"}
RUNNABLE = {"bash", "sh", "python"}
DOC_PORT = 8000
# 8000 to 8009, not inside a longer number or a decimal (0.8001 stays)
_DOC_PORTS = re.compile(r"(?<![\w.])800\d(?!\w)")
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<info>[^`\n]*)$")
_WORD = re.compile(r'(\w+)(?:=("[^"]*"|\S+))?')


@dataclass
class Block:
    page: Path
    line: int
    language: str
    options: dict[str, str]
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}"

    @property
    def kind(self) -> str:
        if "norun" in self.options:
            return "norun"
        if "file" in self.options:
            return "file"
        if self.language in OUTPUT:
            return "output"
        if self.language in RUNNABLE:
            return "background" if "background" in self.options else "run"
        return "unknown"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of `page`, in order (nested fences stay inside their block)."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match or not match["info"].strip():
            i += 1
            continue
        language, _, rest = match["info"].strip().partition(" ")
        options = {k: v.strip('"') for k, v in _WORD.findall(rest)}
        body, j = [], i + 1
        closing = re.compile(rf"^ {{0,{len(match['indent'])}}}{match['fence']}\s*$")
        while j < len(lines) and not closing.match(lines[j]):
            body.append(lines[j][len(match["indent"]):])
            j += 1
        found.append(Block(page, i + 1, language.lower(), options, "\n".join(body) + "\n"))
        i = j + 1
    return found


def free_port(span: int = 4) -> int:
    """A port p with p to p + span - 1 free (`music up --full --port p` takes three).

    Drawn below Linux's ephemeral range (32768 and up): a port the kernel hands out
    there to an outgoing connection of another test could take p + 1 between this
    check and the server's start."""
    for _ in range(200):
        first = random.randrange(10_000, 32_768 - span)
        with contextlib.ExitStack() as bound:
            try:
                for port in range(first, first + span):
                    bound.enter_context(socket.create_server(("127.0.0.1", port)))
            except OSError:
                continue
        return first
    raise AssertionError(f"no {span} consecutive free ports below 32768")


@dataclass
class PageRun:
    """One page's examples run in `folder` with `env`; `close()` stops what it started."""

    folder: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    timeout: float = 300
    started: list[tuple[Block, subprocess.Popen[bytes]]] = field(default_factory=list)
    ports: dict[int, int] = field(default_factory=dict)

    def text(self, block: Block) -> str:
        return _DOC_PORTS.sub(lambda m: str(self._port(int(m[0]))), block.code)

    def _port(self, documented: int) -> int:
        if documented not in self.ports:
            self.ports[documented] = free_port()
        return self.ports[documented]

    def __post_init__(self) -> None:
        self.ports[DOC_PORT] = self.port
        self.env = {**self.env, "MODELPORT_SERVER__PORT": str(self.port)}

    def run(self, block: Block) -> None:
        kind = block.kind
        if kind == "file":
            path = self.folder / block.options["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.text(block))
        elif kind == "run":
            self._run(block)
        elif kind == "background":
            self._start(block)

    def _command(self, block: Block) -> list[str]:
        if block.language == "python":
            return [sys.executable, "-c", self.text(block)]
        return ["bash", "-euo", "pipefail", "-c", self.text(block)]

    def _run(self, block: Block) -> None:
        expected = int(block.options.get("exit", "0"))
        done = subprocess.run(self._command(block), cwd=self.folder, env=self.env,
                              capture_output=True, text=True, timeout=self.timeout)
        if done.returncode != expected:
            raise AssertionError(
                f"{block.where}: exit {done.returncode}, expected {expected}\n"
                f"--- block\n{self.text(block)}--- stdout\n{done.stdout[-3000:]}"
                f"--- stderr\n{done.stderr[-3000:]}")

    def _start(self, block: Block) -> None:
        log = self.folder / f".background-{block.line}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(self._command(block), cwd=self.folder, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.started.append((block, proc))
        ports = {int(p) for p in re.findall(r"(?:--(?:[a-z]+-)?port[ =]|:)(\d{4,5})\b",
                                            self.text(block))}
        deadline = time.monotonic() + self.timeout
        for port in ports or {self.port}:
            while not _accepts(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = log.read_text(errors="replace")[-3000:]
                    raise AssertionError(f"{block.where}: nothing listens on :{port} "
                                         f"(exit {proc.poll()})\n{output}")
                time.sleep(0.1)  # polling a port: there is no event to wait on

    def close(self) -> None:
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in self.started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def environment(folder: Path, venv_bin: Path) -> dict[str, str]:
    """The reader's shell: the project's tools first on PATH, nothing of the test's own
    modelport settings, the services of this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(folder)  # shell completion and caches stay in the page's folder
    env["COLUMNS"] = "120"
    return env


__all__ = ["Block", "PageRun", "blocks", "environment", "free_port"]
