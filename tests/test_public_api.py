"""The public API: what `import modelport` gives and loads, and what the music example
(an application built on modelport) may import."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import modelport

PUBLIC = ("modelport", "modelport.pipeline", "modelport.streams", "modelport.jobs",
          "modelport.server", "modelport.flavors", "modelport.promotion")
"""The modules whose `__all__` is the public API."""
MUSIC = Path(__file__).parents[1] / "examples" / "music"


def test_importing_modelport_loads_no_web_framework_and_starts_nothing() -> None:
    code = ("import sys, threading, modelport; "
            "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'redis', 'nats') "
            "if m in sys.modules), threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["[]", "1"]


@pytest.mark.parametrize("module", PUBLIC)
def test_every_public_name_resolves(module: str) -> None:
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"


def test_a_service_is_built_from_top_level_names() -> None:
    for name in ("Service", "ServiceConfig", "ModelConfig", "Pipeline", "Frame", "Retriever",
                 "Writer", "create_app", "ModelportError", "ConfigError", "NotFound"):
        assert name in modelport.__all__, name


def modelport_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from modelport… import name` and `import modelport…`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "modelport":
            found += [(node.module or "", alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names
                      if alias.name.split(".")[0] == "modelport"]
    return found


def test_the_music_example_imports_only_public_names() -> None:
    files = sorted((MUSIC / "src").rglob("*.py")) + sorted((MUSIC / "tests").rglob("*.py"))
    assert len(files) > 20  # the example is where this test thinks it is
    private = []
    for path in files:
        for module, name in modelport_imports(path):
            public = module in PUBLIC and (
                not name or name in importlib.import_module(module).__all__)
            if not public:
                private.append(f"{path.relative_to(MUSIC)}: {module} {name}".strip())
    assert private == []
