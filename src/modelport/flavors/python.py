"""Plain Python models: any class with `predict()` (and optionally `load()`).

Loading one runs its code, so (like pickle) it needs `trusted=True`. The class is
saved by import path; when its module is a file or package of the user's own (not an
installed distribution), its source is packaged with the artifact so the model loads
anywhere. Files the model needs are declared in a `files` mapping on the instance,
copied into the artifact, and handed to `load(files)` as paths. The loaded instance
is made with no arguments, so everything it needs must come from those files::

    class Scorer:
        files = {"weights": "weights.npy"}

        def load(self, files):
            self.w = np.load(files["weights"])

        def predict(self, x):
            return x @ self.w
"""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from modelport.errors import FlavorError
from modelport.flavors.base import Flavor

# a key names a folder inside the artifact: no separators, no "..", nothing hidden
_FILE_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# imports swap entries of sys.modules and sys.path, which are process-wide
_IMPORT_LOCK = threading.Lock()


class PythonFlavor(Flavor):
    name = "python"
    computes_only = False  # the class may call a database or a service: never timed

    @classmethod
    def save(cls, obj: Any, path: Path, *, trusted: bool = False) -> dict[str, Any]:
        klass = type(obj)
        if klass.__module__ == "__main__" or "<locals>" in klass.__qualname__:
            raise FlavorError(
                f"{klass.__qualname__} must be importable: define it at the top level of a "
                "module, not in __main__ or inside a function"
            )
        source = _own_source(klass.__module__.partition(".")[0])
        if source is not None:
            code = path / "code"
            code.mkdir()
            if source.name == "__init__.py":
                shutil.copytree(source.parent, code / source.parent.name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, code / source.name)
        return {"class": f"{klass.__module__}:{klass.__qualname__}",
                "files": _copy_files(getattr(obj, "files", None) or {}, path)}

    @classmethod
    def read_file(cls, path: Path, *, trusted: bool = False) -> Any:
        raise FlavorError("python models are registered from Python: reg.register(name, obj)")

    def load(self) -> None:
        if not self.trusted:
            raise FlavorError(
                "python models run their own code when loaded; load with trusted=True "
                "only if you trust whoever registered it"
            )
        module_name, _, qualname = self.options["class"].partition(":")
        try:
            target: Any = _import(module_name, self.path / "code")
            for part in qualname.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise FlavorError(f"cannot import {self.options['class']}: {exc}") from exc
        try:
            self.model = target()
            if callable(getattr(self.model, "load", None)):
                files = {k: self.path / v for k, v in self.options["files"].items()}
                self.model.load(files)
        except Exception as exc:
            raise FlavorError(
                f"{qualname} failed to load ({type(exc).__name__}: {exc}); a python model is "
                "made with no arguments and reads what it needs in load(files)"
            ) from exc

    def predict(self, x: Any) -> Any:
        return self.model.predict(x)


def _own_source(top: str) -> Path | None:
    """The file or package `__init__.py` of a top-level module to package with the
    artifact; None when the module comes installed (site-packages, the stdlib)."""
    if top == "modelport":
        return None
    try:
        source = Path(inspect.getfile(sys.modules[top]))
    except (KeyError, TypeError) as exc:  # a namespace package has no file
        raise FlavorError(
            f"cannot package the code of module {top!r} ({exc}): make it a single file "
            "or a package with an __init__.py, or install it where the model is loaded"
        ) from exc
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    installed = any(source.resolve().is_relative_to(Path(r).resolve()) for r in roots)
    return None if installed else source


def _copy_files(files: dict[str, Any], path: Path) -> dict[str, str]:
    copied: dict[str, str] = {}
    for key, file in files.items():
        if not isinstance(key, str) or not _FILE_KEY.match(key):
            raise FlavorError(
                f"files[{key!r}]: a key is 1-64 letters, digits, '_', '.' or '-' "
                "(it names a folder in the artifact)"
            )
        src = Path(file)
        if not src.is_file():
            raise FlavorError(f"files[{key!r}]: {src} is not a file")
        (path / "files" / key).mkdir(parents=True)
        shutil.copy2(src, path / "files" / key / src.name)
        copied[key] = f"files/{key}/{src.name}"
    return copied


def _import(module_name: str, code: Path) -> ModuleType:
    """Import `module_name`, from the artifact's own copy of its code when it has one.

    Two versions of one model, loaded side by side while an alias moves, have modules
    of the same name: importing the second would find the first in `sys.modules` and
    silently run the old code. So the packaged code is imported fresh, with its folder
    first on `sys.path` and any module of that name set aside, which is put back after
    (the objects made from the fresh modules keep them alive). Only a module nobody
    had imported stays registered, so a first load looks like a plain import.
    """
    if not code.is_dir():
        return importlib.import_module(module_name)
    top = module_name.partition(".")[0]
    with _IMPORT_LOCK:
        aside = {k: sys.modules.pop(k) for k in list(sys.modules) if _within(k, top)}
        sys.path.insert(0, str(code))
        # no __pycache__ in the artifact folder: at registration it is packed after this
        bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
        try:
            return importlib.import_module(module_name)
        finally:
            sys.dont_write_bytecode = bytecode
            sys.path.remove(str(code))
            if aside:
                for k in [k for k in sys.modules if _within(k, top)]:
                    del sys.modules[k]
                sys.modules.update(aside)


def _within(module: str, top: str) -> bool:
    return module == top or module.startswith(top + ".")
