"""Every example of the docs runs as written: README.md, docs/*.md and the examples'
READMEs, each page's fenced blocks in order (tests/docs/runner.py says how a block
says what to do with it), against the real services.

A page is either run here or listed in PENDING, the pages whose examples are not yet
marked for running: a new page is run from the day it is added.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from runner import PageRun, blocks, environment

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"),
                *ROOT.glob("examples/*/README.md")])
PENDING: set[str] = set()


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def test_every_pending_page_exists() -> None:
    assert {name(p) for p in PAGES} >= PENDING


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_block_says_how_it_is_tested(page: Path) -> None:
    if name(page) in PENDING:
        pytest.skip(f"{name(page)}: examples not yet marked for running")
    for block in blocks(page):
        assert block.kind != "unknown", (
            f"{block.where}: a ```{block.language} block is neither run nor output: "
            "mark it (tests/docs/runner.py)")
        if block.kind not in ("output", "norun"):
            assert "..." not in block.code and "…" not in block.code, (
                f"{block.where}: an example has a '...' to fill in: make it complete")
        if block.kind == "norun":
            assert block.options["norun"].strip(), f"{block.where}: norun needs a reason"


@pytest.fixture
def page_run(tmp_path: Path) -> Iterator[PageRun]:
    run = PageRun(tmp_path, environment(tmp_path, Path(sys.executable).parent))
    yield run
    run.close()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", [p for p in PAGES if name(p) not in PENDING], ids=name)
def test_the_page_runs_as_written(page: Path, page_run: PageRun) -> None:
    for block in blocks(page):
        page_run.run(block)
