"""Names a package exports without importing them until first use (PEP 562).

A package's `__init__` lists where each lazy name lives and sets
`__getattr__ = lazy_exports(__name__, {...})`: `import modelport` then loads no web
framework, broker client or report library, and a name is imported once, on first use.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `where[name]` is the module holding
    `name`; the value, once imported, is kept in the package (looked up once)."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


__all__ = ["lazy_exports"]
