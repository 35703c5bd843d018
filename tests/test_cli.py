"""The `modelport` command, run as users run it: a subprocess through the real entry
point (`python -m modelport`, and once the installed console script), with its own
MODELPORT_HOME, checking exit codes, stdout (JSON parsed) and stderr."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from modelport import Registry, Settings, cli, quickstart


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def mp(home: Path, tmp_path: Path) -> Any:
    """Run `modelport ARGS…` against this test's home; returns a Result."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["MODELPORT_HOME"] = str(home)
    env["COLUMNS"] = "200"

    def run(*args: str, stdin: str | None = None) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "modelport", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
            input=stdin if stdin is not None else "",
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


def one_line_error(result: Result, code: int, *words: str) -> None:
    """A user error: the exit code, and exactly one line on stderr, no traceback."""
    assert result.code == code, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small classifier as .skops and .joblib, and samples as .csv, .npy and .json."""
    import joblib
    import numpy as np
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("files")
    x, y = load_iris(return_X_y=True, as_frame=True)
    framed = LogisticRegression(max_iter=500).fit(x, y)
    plain = LogisticRegression(max_iter=500).fit(x.to_numpy(), y)
    paths = {
        "skops": folder / "iris.skops",
        "joblib": folder / "iris.joblib",
        "plain": folder / "plain.skops",
        "csv": folder / "sample.csv",
        "npy": folder / "sample.npy",
        "json": folder / "sample.json",
    }
    sio.dump(framed, paths["skops"])
    joblib.dump(framed, paths["joblib"])
    sio.dump(plain, paths["plain"])
    x.head(5).to_csv(paths["csv"], index=False)
    np.save(paths["npy"], x.head(5).to_numpy())
    paths["json"].write_text(json.dumps(x.head(5).to_dict(orient="records")))
    return paths


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home where `iris` has versions 1, 2 and 3 (registered in-process: fast)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    home = tmp_path_factory.mktemp("seeded") / "home"
    x, y = load_iris(return_X_y=True, as_frame=True)
    with Registry(settings=Settings(home=home)) as reg:
        for c in (0.5, 1.0, 2.0):
            model = LogisticRegression(C=c, max_iter=500).fit(x, y)
            reg.register("iris", model, sample_input=x.head(5), params={"C": c})
    return home


@pytest.fixture
def seeded(seeded_home: Path, home: Path) -> Path:
    """This test's own copy of the seeded home."""
    shutil.copytree(seeded_home, home)
    return home


def test_help(mp: Any) -> None:
    for args in ([], ["models"]):
        result = mp(*args, "--help")
        assert result.code == 0, result.err
        assert "Usage" in result.out
    bare = mp()
    assert bare.code == 2
    assert "models" in bare.out


@pytest.mark.parametrize(
    "command", ["list", "show", "register", "alias", "rollback", "history", "delete"])
def test_help_of_every_command(command: str, settings: Settings,
                               capsys: pytest.CaptureFixture[str]) -> None:
    # in-process (the same `run` the entry point calls), to spare a Python start each
    assert cli.run(["models", command, "--help"], settings) == 0
    assert f"modelport models {command}" in capsys.readouterr().out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "modelport"
    if not script.exists():
        pytest.skip("the modelport console script is not installed beside this Python")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("modelport ")


def test_register_list_show(mp: Any, files: dict[str, Path]) -> None:
    result = mp("models", "register", "iris", str(files["skops"]), "--sample", str(files["csv"]),
                "--metric", "acc=0.97", "--param", "C=1.0", "--param", "solver=lbfgs",
                "--tag", "team=ml", "--tag", "run=42", "--alias", "production")
    assert result.code == 0, result.err
    assert "iris:1" in result.out
    assert "production" in result.out

    listed = mp("models", "list", "--json").json()
    assert listed == [{"name": "iris", "description": None, "latest_version": 1,
                       "versions": 1, "aliases": {"production": 1}}]

    for ref in ("iris", "iris@production", "iris:1"):
        shown = mp("models", "show", ref, "--json").json()
        assert shown["version"] == 1
    assert shown["flavor"] == "sklearn"
    assert shown["metrics"] == {"acc": 0.97}
    assert shown["params"] == {"C": 1.0, "solver": "lbfgs"}
    assert shown["tags"] == {"team": "ml", "run": "42"}  # tags stay text
    assert shown["aliases"] == ["production"]
    assert len(shown["sha256"]) == 64
    assert shown["size"] > 0
    assert shown["signature"]["inputs"][0]["name"] == "sepal length (cm)"
    assert {o["name"] for o in shown["signature"]["outputs"]} == {"predictions", "probabilities"}
    assert "profile" not in shown

    human = mp("models", "show", "iris@production")
    assert human.code == 0, human.err
    for text in ("iris:1", "sepal length (cm)", "probabilities", "acc", "team", shown["sha256"]):
        assert text in human.out
    versions = mp("models", "list", "iris", "--json").json()
    assert [v["version"] for v in versions] == [1]
    assert mp("models", "list").code == 0


def test_samples_from_npy_and_json(mp: Any, files: dict[str, Path]) -> None:
    npy = mp("models", "register", "plain", str(files["plain"]), "--sample", str(files["npy"]),
             "--json")
    assert npy.code == 0, npy.err
    assert npy.json()["signature"]["inputs"][0]["shape"] == [4]
    records = mp("models", "register", "iris", str(files["skops"]), "--sample",
                 str(files["json"]), "--json")
    assert records.code == 0, records.err
    assert records.json()["signature"]["layout"] == "columns"


def test_joblib_needs_trusted(mp: Any, files: dict[str, Path]) -> None:
    refused = mp("models", "register", "iris", str(files["joblib"]), "--sample", str(files["csv"]))
    one_line_error(refused, 1, "--trusted")
    assert mp("models", "list", "--json").json() == []

    accepted = mp("models", "register", "iris", str(files["joblib"]), "--sample",
                  str(files["csv"]), "--trusted")
    assert accepted.code == 0, accepted.err
    assert "iris:1" in accepted.out


def test_alias_rollback_history(mp: Any, seeded: Path) -> None:
    for version in ("1", "2", "3"):
        moved = mp("models", "alias", "iris", "production", version, "--reason", "test")
        assert moved.code == 0, moved.err
    assert "2 → 3" in moved.out
    assert mp("models", "show", "iris@production", "--json").json()["version"] == 3

    back = mp("models", "rollback", "iris", "production")
    assert back.code == 0, back.err
    assert "3 → 2" in back.out
    assert mp("models", "show", "iris@production", "--json").json()["version"] == 2

    assert mp("models", "alias", "iris", "staging", "3").code == 0
    events = mp("models", "history", "iris", "--alias", "production", "--json").json()
    assert [(e["kind"], e["from_version"], e["to_version"]) for e in events] == [
        ("set", None, 1), ("set", 1, 2), ("set", 2, 3), ("rollback", 3, 2)]
    assert events[0]["reason"] == "test"
    assert len(mp("models", "history", "iris", "--json").json()) == 5
    assert "rollback" in mp("models", "history", "iris").out

    removed = mp("models", "alias", "iris", "staging", "--remove")
    assert removed.code == 0, removed.err
    assert mp("models", "show", "iris:3", "--json").json()["aliases"] == []
    one_line_error(mp("models", "alias", "iris", "staging"), 2, "--remove")
    one_line_error(mp("models", "rollback", "iris", "staging"), 1, "staging")


def test_delete(mp: Any, seeded: Path) -> None:
    assert mp("models", "alias", "iris", "production", "1").code == 0

    one_line_error(mp("models", "delete", "iris", "1", "--yes"), 1, "production")
    one_line_error(mp("models", "delete", "iris", "2"), 2, "--yes")  # no terminal to ask on

    deleted = mp("models", "delete", "iris", "2", "--yes")
    assert deleted.code == 0, deleted.err
    assert [v["version"] for v in mp("models", "list", "iris", "--json").json()] == [1, 3]
    one_line_error(mp("models", "show", "iris:2"), 1, "no version 2")


def test_user_errors_are_one_line(mp: Any, files: dict[str, Path]) -> None:
    one_line_error(mp("models", "show", "nope"), 1, "no model named 'nope'")
    one_line_error(mp("models", "show", "bad/name"), 1, "invalid model name")
    one_line_error(mp("models", "rollback", "nope", "production"), 1, "nope")
    one_line_error(mp("models", "history", "nope"), 1, "nope")
    one_line_error(mp("models", "register", "iris"), 2, "FILE")
    one_line_error(mp("models", "register", "iris", "missing.skops", "--sample",
                      str(files["csv"])), 2, "missing.skops")
    one_line_error(mp("models", "register", "iris", str(files["skops"]), "--sample",
                      str(files["csv"]), "--metric", "acc"), 2, "KEY=VALUE")
    one_line_error(mp("models", "register", "iris", str(files["csv"]), "--sample",
                      str(files["csv"])), 1, "--flavor")
    one_line_error(mp("models", "lst"), 2, "No such command")
    one_line_error(mp("models", "delete", "iris", "one"), 2)


def test_global_options_override_settings(mp: Any, files: dict[str, Path],
                                          tmp_path: Path, home: Path) -> None:
    other = tmp_path / "other"
    args = ("--registry-url", f"sqlite:///{other / 'reg.db'}", "--artifacts", str(other / "art"))
    result = mp(*args, "models", "register", "iris", str(files["skops"]),
                "--sample", str(files["csv"]))
    assert result.code == 0, result.err
    assert (other / "reg.db").exists()
    assert any((other / "art").rglob("*"))
    assert [m["name"] for m in mp(*args, "models", "list", "--json").json()] == ["iris"]
    assert mp("models", "list", "--json").json() == []  # the default home is untouched


def test_quickstart_end_to_end(mp: Any, home: Path) -> None:
    first = mp("quickstart")
    assert first.code == 0, first.err
    assert "breast-cancer:1" in first.out
    assert "modelport models show breast-cancer@production" in first.out

    # run again (in-process, to spare a second cold start of scikit-learn): a new
    # version, promoted
    with Registry(settings=Settings(home=home)) as reg:
        mv = quickstart.run(reg, Console(file=io.StringIO()))
    assert mv.version == 2
    shown = mp("models", "show", "breast-cancer@production", "--json").json()
    assert shown["version"] == 2
    assert shown["metrics"]["auc"] > 0.9
    assert len(shown["signature"]["inputs"]) == 30
