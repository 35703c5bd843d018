"""Every built-in component name builds from yaml-style options (the maps stay true)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.errors import ConfigError
from modelport.pipeline import Retriever, Writer
from modelport.pipeline.pipeline import RETRIEVERS, WRITERS, ComponentConfig, build


def options(kind: str, tmp_path: Path) -> dict[str, object]:
    return {
        "sql": {"url": f"sqlite:///{tmp_path / 'x.db'}", "table": "t"},
        "redis": {"url": "redis://127.0.0.1:6379/15", "prefix": "p:"},
        "http": {"url": "http://features/rows", "retries": 1},
        "file": {"path": str(tmp_path / "x.csv")},
        "memory": {"rows": {}},
        "stream": {"subject": "scores"},
    }[kind]


@pytest.mark.parametrize("kind", sorted(RETRIEVERS))
def test_retrievers_build_by_name(kind: str, tmp_path: Path) -> None:
    component = build(ComponentConfig(type=kind, **options(kind, tmp_path)), RETRIEVERS, "p")
    assert isinstance(component, Retriever)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_writers_build_by_name(kind: str, tmp_path: Path) -> None:
    opts = options(kind, tmp_path)
    opts.pop("rows", None)
    component = build(ComponentConfig(type=kind, **opts), WRITERS, "p")
    assert isinstance(component, Writer)


def test_a_misspelled_option_names_the_pipeline(tmp_path: Path) -> None:
    config = ComponentConfig(type="sql", url="sqlite://", tabel="t")
    with pytest.raises(ConfigError, match=r"score.retriever: .*'tabel'"):
        build(config, RETRIEVERS, "score.retriever")
