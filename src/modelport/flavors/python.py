"""Plain Python models: any class with `predict()` (and optionally `load()`).

Loading one runs its code, so (like pickle) it needs `trusted=True`. The class is
saved by import path; when its module is a file or package of the
user's own (not an installed distribution), its source is packaged with the artifact
so the model loads anywhere. Files the model needs are declared in a `files` mapping
on the instance, copied into the artifact, and handed to `load(files)` as paths::

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
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from modelport.errors import FlavorError
from modelport.flavors.base import Flavor


class PythonFlavor(Flavor):
    name = "python"

    @classmethod
    def save(cls, obj: Any, path: Path, *, trusted: bool = False) -> dict[str, Any]:
        klass = type(obj)
        if klass.__module__ == "__main__" or "<locals>" in klass.__qualname__:
            raise FlavorError(
                f"{klass.__qualname__} must be importable: define it at the top level of a "
                "module, not in __main__ or inside a function"
            )
        top = klass.__module__.partition(".")[0]
        source = Path(inspect.getfile(sys.modules[top]))
        if not _installed(source):
            code = path / "code"
            code.mkdir()
            if source.name == "__init__.py":
                shutil.copytree(source.parent, code / top,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, code / source.name)
        files: dict[str, str] = {}
        for key, file in (getattr(obj, "files", None) or {}).items():
            src = Path(file)
            if not src.is_file():
                raise FlavorError(f"files[{key!r}]: {src} is not a file")
            (path / "files" / key).mkdir(parents=True)
            shutil.copy2(src, path / "files" / key / src.name)
            files[key] = f"files/{key}/{src.name}"
        return {"class": f"{klass.__module__}:{klass.__qualname__}", "files": files}

    @classmethod
    def read_file(cls, path: Path, *, trusted: bool = False) -> Any:
        raise FlavorError("python models are registered from Python: reg.register(name, obj)")

    def load(self) -> None:
        if not self.trusted:
            raise FlavorError(
                "python models run their own code when loaded; load with trusted=True "
                "only if you trust whoever registered it"
            )
        code = self.path / "code"
        if code.exists() and str(code) not in sys.path:
            sys.path.insert(0, str(code))
        module_name, _, qualname = self.options["class"].partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise FlavorError(f"cannot import {self.options['class']}: {exc}") from exc
        self.model = target()
        if callable(getattr(self.model, "load", None)):
            files = {k: self.path / v for k, v in self.options["files"].items()}
            self.model.load(files)

    def predict(self, x: Any) -> Any:
        return self.model.predict(x)


def _installed(source: Path) -> bool:
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    return any(source.resolve().is_relative_to(Path(r).resolve()) for r in roots)
