"""The `modelport` command.

Run as users run it: a subprocess through the real entry point (`python -m modelport`,
and once the installed console script), with its own MODELPORT_HOME, checking exit
codes, stdout (JSON parsed) and stderr. Each subprocess pays a Python start, so set-up
and extra checks go through the registry in-process, and the many small error cases
through `modelport.cli.run` (what the entry point calls) in-process.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
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


Run = Callable[..., Result]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def mp(home: Path, tmp_path: Path) -> Run:
    """Run `modelport ARGS…` in a subprocess against this test's home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["MODELPORT_HOME"] = str(home)
    env["COLUMNS"] = "200"

    def run(*args: str) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "modelport", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100, input="",
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def inproc(home: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `modelport ARGS…` in this process (`cli.run`, as the entry point does)."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = cli.run(list(args), Settings(home=home))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def registry(home: Path) -> Registry:
    return Registry(settings=Settings(home=home))


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
    with registry(home) as reg:
        for c in (0.5, 1.0, 2.0):
            model = LogisticRegression(C=c, max_iter=500).fit(x, y)
            reg.register("iris", model, sample_input=x.head(5), params={"C": c})
    return home


@pytest.fixture
def seeded(seeded_home: Path, home: Path) -> Path:
    """This test's own copy of the seeded home."""
    shutil.copytree(seeded_home, home)
    return home


# --- help -----------------------------------------------------------------------------


def test_help(mp: Run) -> None:
    result = mp("--help")
    assert result.code == 0, result.err
    for command in ("models", "quickstart"):
        assert command in result.out
    bare = mp()
    assert bare.code == 2
    assert "models" in bare.out


@pytest.mark.parametrize(
    "args",
    [["models"], *(["models", c] for c in
                   ("list", "show", "register", "alias", "rollback", "history", "delete")),
     ["quickstart"]],
)
def test_help_of_every_command(inproc: Run, args: list[str]) -> None:
    result = inproc(*args, "--help")
    assert result.code == 0, result.err
    assert f"modelport {' '.join(args)}" in result.out


def test_help_texts_are_whole_sentences(mp: Run) -> None:
    """The command lists show each command's first paragraph, as written: no sentence
    is cut where its docstring's source line ended."""
    todo = [cli.command()]
    while todo:
        command = todo.pop()
        first = (command.help or "").partition("\n\n")[0]
        assert first.strip() and "\n" not in first, (command.name, first)
        todo.extend(getattr(command, "commands", {}).values())
    listed = mp("--help").out  # COLUMNS is wide here: no wrapping of its own
    assert "through a pipeline, in resumable chunks." in listed


def test_shell_completion_script(mp: Run) -> None:
    assert "--install-completion" in mp("--help").out
    # What `--install-completion` installs for bash, asked for by name: `--show-completion`
    # names the shell it detects from its parents, which under make or CI is `sh`.
    shown = subprocess.run(
        [sys.executable, "-m", "modelport"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "_MODELPORT_COMPLETE": "source_bash"})
    assert shown.returncode == 0, shown.stderr
    assert "_modelport_completion" in shown.stdout and "complete " in shown.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "modelport"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "_MODELPORT_COMPLETE": "complete_bash",
             "COMP_WORDS": "modelport mo", "COMP_CWORD": "1"})
    assert "models" in listed.stdout.split()


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "modelport"
    if not script.exists():
        pytest.skip("the modelport console script is not installed beside this Python")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                            timeout=100, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("modelport ")


# --- registering and reading ------------------------------------------------------------


def test_register_list_show(mp: Run, inproc: Run, files: dict[str, Path]) -> None:
    result = mp("models", "register", "iris", str(files["skops"]), "--sample", str(files["csv"]),
                "--metric", "acc=0.97", "--param", "C=1.0", "--param", "solver=lbfgs",
                "--tag", "team=ml", "--tag", "run=42", "--alias", "production")
    assert result.code == 0, result.err
    assert "iris:1" in result.out
    assert "production" in result.out

    listed = mp("models", "list", "--json").json()
    assert listed == [{"name": "iris", "description": None, "latest_version": 1,
                       "versions": 1, "aliases": {"production": 1}}]

    shown = mp("models", "show", "iris@production", "--json").json()
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

    human = mp("models", "show", "iris:1")
    assert human.code == 0, human.err
    for text in ("iris:1", "sepal length (cm)", "probabilities", "acc", "team", shown["sha256"]):
        assert text in human.out

    assert inproc("models", "show", "iris", "--json").json()["version"] == 1
    assert [v["version"] for v in inproc("models", "list", "iris", "--json").json()] == [1]
    for args in (["models", "list"], ["models", "list", "iris"]):
        result = inproc(*args)
        assert result.code == 0, result.err
        assert "iris" in result.out


def test_samples_from_npy_and_json(mp: Run, files: dict[str, Path]) -> None:
    npy = mp("models", "register", "plain", str(files["plain"]), "--sample", str(files["npy"]),
             "--json")
    assert npy.code == 0, npy.err
    assert npy.json()["signature"]["inputs"][0]["shape"] == [4]
    records = mp("models", "register", "iris", str(files["skops"]), "--sample",
                 str(files["json"]), "--json")
    assert records.code == 0, records.err
    assert records.json()["signature"]["layout"] == "columns"


def test_a_signature_written_by_hand(inproc: Run, files: dict[str, Path],
                                     tmp_path: Path) -> None:
    declared = tmp_path / "signature.yaml"
    names = [f"f{i}" for i in range(4)]
    declared.write_text("layout: columns\ninputs:\n" + "".join(
        f"  - {{name: {n}, datatype: FP32}}\n" for n in names))
    result = inproc("models", "register", "plain", str(files["plain"]), "--sample",
                    str(files["npy"]), "--signature", str(declared), "--json")
    assert result.code == 0, result.err
    inputs = result.json()["signature"]["inputs"]
    assert [(i["name"], i["datatype"]) for i in inputs] == [(n, "FP32") for n in names]

    declared.write_text("layout: columns\ninputs: [{name: a, datatype: FLOAT}]\n")
    one_line_error(inproc("models", "register", "plain", str(files["plain"]), "--sample",
                          str(files["npy"]), "--signature", str(declared)), 1,
                   "signature.yaml: not a signature: inputs.0.datatype")


def test_joblib_needs_trusted(mp: Run, files: dict[str, Path], home: Path) -> None:
    refused = mp("models", "register", "iris", str(files["joblib"]), "--sample", str(files["csv"]))
    one_line_error(refused, 1, "--trusted")
    with registry(home) as reg:
        assert reg.list_models() == []

    accepted = mp("models", "register", "iris", str(files["joblib"]), "--sample",
                  str(files["csv"]), "--trusted")
    assert accepted.code == 0, accepted.err
    assert "iris:1" in accepted.out


# --- aliases and deleting -------------------------------------------------------------


def test_alias_rollback_history(mp: Run, inproc: Run, seeded: Path) -> None:
    with registry(seeded) as reg:
        reg.set_alias("iris", "production", 1)
    moved = mp("models", "alias", "iris", "production", "2", "--reason", "better")
    assert moved.code == 0, moved.err
    assert "1 → 2" in moved.out
    assert inproc("models", "alias", "iris", "production", "3").code == 0

    back = mp("models", "rollback", "iris", "production", "--reason", "latency up")
    assert back.code == 0, back.err
    assert "3 → 2" in back.out
    with registry(seeded) as reg:
        assert reg.resolve("iris@production").version == 2
        reg.set_alias("iris", "staging", 3)

    events = mp("models", "history", "iris", "--alias", "production", "--json").json()
    assert [(e["kind"], e["from_version"], e["to_version"]) for e in events] == [
        ("set", None, 1), ("set", 1, 2), ("set", 2, 3), ("rollback", 3, 2)]
    assert events[1]["reason"] == "better" and events[3]["reason"] == "latency up"
    assert len(inproc("models", "history", "iris", "--json").json()) == 5
    assert "rollback" in inproc("models", "history", "iris").out

    removed = mp("models", "alias", "iris", "staging", "--remove")
    assert removed.code == 0, removed.err
    with registry(seeded) as reg:
        assert reg.get_version("iris", 3).aliases == []
    one_line_error(inproc("models", "alias", "iris", "staging"), 2, "--remove")
    one_line_error(inproc("models", "rollback", "iris", "staging"), 1, "staging")


def test_delete(mp: Run, seeded: Path) -> None:
    with registry(seeded) as reg:
        reg.set_alias("iris", "production", 1)

    one_line_error(mp("models", "delete", "iris", "1", "--yes"), 1, "production")
    one_line_error(mp("models", "delete", "iris", "2"), 2, "--yes")  # no terminal to ask on

    deleted = mp("models", "delete", "iris", "2", "--yes")
    assert deleted.code == 0, deleted.err
    with registry(seeded) as reg:
        assert [v.version for v in reg.list_versions("iris")] == [1, 3]


# --- errors and options ---------------------------------------------------------------


def test_user_errors_are_one_line(mp: Run, files: dict[str, Path]) -> None:
    one_line_error(mp("models", "show", "nope"), 1, "no model named 'nope'")
    one_line_error(mp("models", "register", "iris"), 2, "FILE")
    one_line_error(mp("models", "register", "iris", "missing.skops", "--sample",
                      str(files["csv"])), 2, "missing.skops")


@pytest.mark.parametrize(("args", "code", "words"), [
    (["models", "show", "bad/name"], 1, ["invalid model name"]),
    (["models", "show", "nope:2"], 1, ["nope"]),
    (["models", "rollback", "nope", "production"], 1, ["nope"]),
    (["models", "history", "nope"], 1, ["nope"]),
    (["models", "delete", "nope", "1", "--yes"], 1, ["nope"]),
    (["models", "alias", "nope", "production", "1"], 1, ["nope"]),
    (["models", "alias", "x", "Bad Alias!", "1"], 1, ["invalid alias"]),
    (["models", "lst"], 2, ["No such command"]),
    (["models", "delete", "iris", "one"], 2, ["VERSION"]),
    (["models", "show"], 2, ["NAME"]),
    (["models", "register", "iris", "SKOPS", "--sample", "CSV", "--metric", "acc"], 2,
     ["KEY=VALUE"]),
    (["models", "register", "iris", "CSV", "--sample", "CSV"], 1, ["--flavor"]),
    (["models", "register", "iris", "SKOPS", "--sample", "SKOPS"], 1, [".csv"]),
    (["--registry-url", "nosuchdb://x", "models", "list"], 1, ["nosuchdb"]),
])
def test_more_user_errors(inproc: Run, files: dict[str, Path], args: list[str], code: int,
                          words: list[str]) -> None:
    paths = {"SKOPS": str(files["skops"]), "CSV": str(files["csv"])}
    one_line_error(inproc(*(paths.get(a, a) for a in args)), code, *words)


def test_serve_workers_against_a_model_on_the_loop_is_one_line(inproc: Run,
                                                               tmp_path: Path) -> None:
    config = tmp_path / "modelport.yaml"
    config.write_text("models:\n  - ref: m:1\n    on_loop: true\n")
    one_line_error(inproc("serve", "--config", str(config), "--workers", "2"), 1,
                   "--workers 2: model m runs on the event loop (on_loop: true)")


def test_global_options_override_settings(mp: Run, files: dict[str, Path], tmp_path: Path,
                                          home: Path) -> None:
    other = tmp_path / "other"
    args = ("--registry-url", f"sqlite:///{other / 'reg.db'}", "--artifacts", str(other / "art"))
    result = mp(*args, "models", "register", "iris", str(files["skops"]),
                "--sample", str(files["csv"]))
    assert result.code == 0, result.err
    assert (other / "reg.db").exists()
    assert any((other / "art").rglob("*"))
    assert [m["name"] for m in mp(*args, "models", "list", "--json").json()] == ["iris"]
    assert not home.exists()  # the default home is untouched


# --- quickstart -----------------------------------------------------------------------


def test_quickstart_end_to_end(mp: Run, home: Path) -> None:
    first = mp("quickstart")
    assert first.code == 0, first.err
    assert "breast-cancer:1" in first.out
    assert "modelport models show breast-cancer@production" in first.out

    # run again (in-process, to spare a second cold start of scikit-learn): a new
    # version, promoted
    with registry(home) as reg:
        mv = quickstart.run(reg, Console(file=io.StringIO()))
    assert mv.version == 2
    shown = mp("models", "show", "breast-cancer@production", "--json").json()
    assert shown["version"] == 2
    assert shown["metrics"]["auc"] > 0.9
    assert len(shown["signature"]["inputs"]) == 30
