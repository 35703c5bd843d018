"""Serving benchmark: modelport against two hand-written FastAPI endpoints (the usual
one, and issue 19's minimal one), a no-op ASGI app (the HTTP limit) and raw predict.

    .venv/bin/python bench/serving.py [--quick]        # or: make bench

Load comes from `wrk` in its own process, pinned to one core; every server is pinned
to the other. Each configuration runs `--rounds` times, interleaved with the others
(so drift on a noisy machine hits them all alike); the table shows medians, and the
targets are medians of ratios taken within a round. Beside wall-clock numbers it
reports the CPU time each server spent per request, read from /proc: that one does
not depend on what else the machine runs. bench/README.md explains every column and
the targets; the results are also written as JSON to bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import servers  # bench/servers.py: what runs in the child processes
from harness import (
    FASTAPI,
    MINIMAL,
    NOOP,
    Cores,
    Histogram,
    RawPredict,
    Sample,
    Server,
    batch_histogram,
    http,
    launch,
    parse_wrk,
    requests_by_version,
    stop,
    wait_ready,
    write_script,
    wrk,
    wrk_command,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "serving.json"
CONCURRENCY = (1, 8, 64)
ALIAS = "production"
MODELPORT, BATCHING_OFF = "modelport", "modelport, batching off"
LABELS = (MODELPORT, BATCHING_OFF, FASTAPI, MINIMAL, NOOP)
LIMIT_CONCURRENCY = 64  # the no-op app runs at this one only, on the small model


@dataclass(frozen=True)
class Plan:
    seconds: float  # per wrk run
    rounds: int  # runs per configuration
    warmup: float
    flip_seconds: float
    flips: int
    raw_seconds: float  # per raw timing


FULL = Plan(seconds=5, rounds=3, warmup=2, flip_seconds=10, flips=6, raw_seconds=1.5)
QUICK = Plan(seconds=2, rounds=1, warmup=1, flip_seconds=4, flips=3, raw_seconds=0.5)


# --- the models -----------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    key: str  # "small" | "heavy"
    name: str  # registered name
    what: str
    versions: tuple[int, ...]
    body: str  # one row, as {"instances": [[…]]}

    @property
    def ref(self) -> str:
        return f"{self.name}@{ALIAS}"


def register(home: Path) -> list[Subject]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from modelport.registry import Registry

    xs, ys = servers.dataset("small")
    xh, yh = servers.dataset("heavy")
    small = [make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(xs, ys)
             for c in (1.0, 0.1)]  # two versions, for the alias flip
    heavy = HistGradientBoostingClassifier(random_state=0).fit(xh, yh)
    out = []
    with Registry(settings=servers.settings_for(home)) as registry:
        for key, name, what, models, x in (
            ("small", "bench-small", "StandardScaler + LogisticRegression on breast cancer "
             "(30 features)", small, xs),
            ("heavy", "bench-heavy", "HistGradientBoostingClassifier on digits (64 features, "
             "10 classes, 100 iterations = 1000 trees)", [heavy], xh),
        ):
            versions = tuple(registry.register(name, m, sample_input=x[:5]).version
                             for m in models)
            registry.set_alias(name, ALIAS, versions[0])
            body = json.dumps({"instances": [x[0].tolist()]})
            out.append(Subject(key, name, what, versions, body))
    return out


# --- measuring ------------------------------------------------------------------------


@dataclass
class Cell:
    """One configuration (server, model, concurrency) over every round."""

    model: str
    server: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    batches: list[Histogram] = field(default_factory=list)  # per round (modelport)
    raw: list[dict[str, float]] = field(default_factory=list)  # per round, formed size

    def median(self, attr: str) -> float:
        return statistics.median(float(getattr(s, attr)) for s in self.samples)

    @property
    def all_batches(self) -> Histogram:
        total = Histogram()
        for h in self.batches:
            total = total + h
        return total

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.samples)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "server": self.server, "concurrency": self.concurrency,
            "req_s": round(self.median("ok_per_s"), 1),
            "p50_ms": round(self.median("p50_ms"), 3), "p99_ms": round(self.median("p99_ms"), 3),
            "errors": self.errors,
            "cpu_us_per_request": round(self.median("cpu_us_per_request"), 1),
            "runs": [{**vars(s), "req_s": round(s.ok_per_s, 1)} for s in self.samples],
        }
        if self.batches:
            out["batch_size"] = self.all_batches.as_json()
        if self.raw:
            out["raw_predict_at_formed_size"] = self.raw
        return out


def measure(subject: Subject, home: Path, cores: Cores, plan: Plan,
            tmp: Path) -> tuple[list[Cell], dict[int, dict[str, float]]]:
    """Every configuration of one model, interleaved; then raw predict at fixed sizes."""
    script = write_script(tmp / f"{subject.key}.lua", subject.body)
    workers = {MODELPORT: ["modelport"], BATCHING_OFF: ["modelport", "--no-batching"],
               FASTAPI: ["fastapi"], MINIMAL: ["fastapi-minimal"]}
    if subject.key == "small":
        workers[NOOP] = ["noop"]
    running: list[Server] = []
    raw: RawPredict | None = None
    try:
        for label, worker in workers.items():  # start together, they load in parallel
            running.append(launch(cores, label, worker, home, subject.ref, tmp))
        raw = RawPredict(cores, home, subject.ref, subject.key)
        for server in running:
            wait_ready(server, subject.body)
            wrk(cores, server, script, 8, plan.warmup)
        cells: dict[tuple[str, int], Cell] = {}
        for round_ in range(plan.rounds):
            first = round_ % len(running)
            order = running[first:] + running[:first]  # rotate who goes first
            for c in CONCURRENCY:
                for server in order:
                    if (server.label == BATCHING_OFF and c != 1) or (
                            server.label == NOOP and c != LIMIT_CONCURRENCY):
                        continue
                    cell = cells.setdefault((server.label, c), Cell(subject.key, server.label, c))
                    run_cell(cell, server, raw, cores, script, plan)
        for server in running:  # the servers idle from here: stop them, time raw alone
            stop(server.proc)
        fixed = {size: raw.time(size, plan.raw_seconds) for size in (1, 8, 64)}
        fixed[0] = raw.time(1, plan.raw_seconds, proba=False)  # one predict() on one row
    finally:
        for server in running:
            stop(server.proc)
        if raw is not None:
            raw.close()
    return sorted(cells.values(), key=lambda x: (x.concurrency, LABELS.index(x.server))), fixed


def run_cell(cell: Cell, server: Server, raw: RawPredict, cores: Cores, script: Path,
             plan: Plan) -> None:
    before = batch_histogram(server.port) if server.label == MODELPORT else None
    cell.samples.append(wrk(cores, server, script, cell.concurrency, plan.seconds))
    if before is not None:
        formed = batch_histogram(server.port) - before
        cell.batches.append(formed)
        # raw predict now, at the size this run formed: same round, same machine weather
        cell.raw.append(raw.time(max(1, round(formed.mean)), plan.raw_seconds))
    s = cell.samples[-1]
    print(f"  {cell.model:5} {cell.server:24} c={cell.concurrency:<3} {s.ok_per_s:7.0f} req/s "
          f" p50 {s.p50_ms:7.2f} ms  p99 {s.p99_ms:7.2f} ms  errors {s.errors}  "
          f"cpu {s.cpu_us_per_request:5.0f} us/req", flush=True)


def alias_flip(subject: Subject, home: Path, cores: Cores, plan: Plan,
               tmp: Path) -> dict[str, Any]:
    """Move the alias back and forth under c=64 load; count failed requests."""
    from modelport.registry import Registry
    from modelport.security import add_key

    keys = tmp / "keys.yaml"
    key = add_key(keys, "bench", ["admin"])
    script = write_script(tmp / "flip.lua", subject.body)
    server = launch(cores, "modelport-flip", ["modelport", "--poll", "0.2", "--keys", str(keys)],
                    home, subject.ref, tmp)
    moves: list[dict[str, Any]] = []
    try:
        wait_ready(server, subject.body)
        wrk(cores, server, script, 8, plan.warmup)
        before = requests_by_version(server.port)
        load = subprocess.Popen(wrk_command(cores, server.url, script, 64, plan.flip_seconds),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        began = time.monotonic()
        first, second = subject.versions[0], subject.versions[1]
        with Registry(settings=servers.settings_for(home)) as registry:
            for i in range(plan.flips):
                time.sleep(max(0.0, began + plan.flip_seconds * (i + 1) / (plan.flips + 1)
                               - time.monotonic()))
                target = second if i % 2 == 0 else first
                registry.set_alias(subject.name, ALIAS, target, reason="bench: alias flip")
                t0 = time.perf_counter()
                answer = json.loads(http("POST", f"http://127.0.0.1:{server.port}/admin/refresh",
                                         b"", {"X-API-Key": key}))
                moves.append({"to": target, "served": answer["models"][subject.name]["version"],
                              "refresh_ms": round((time.perf_counter() - t0) * 1000, 1)})
            out, _ = load.communicate(timeout=plan.flip_seconds + 60)
            registry.set_alias(subject.name, ALIAS, first, reason="bench: restore")
        sample = parse_wrk(out)
        after = requests_by_version(server.port)
    finally:
        stop(server.proc)
    answered = {v: {s: n - before.get(v, {}).get(s, 0) for s, n in by_status.items()}
                for v, by_status in after.items()}
    return {"model": subject.key, "concurrency": 64, "flips": len(moves), "moves": moves,
            "requests": sample.requests, "req_s": round(sample.ok_per_s, 1),
            "p50_ms": sample.p50_ms, "p99_ms": sample.p99_ms, "non2xx": sample.non2xx,
            "socket_errors": sample.socket_errors, "failed": sample.errors,
            "answered_by_version": answered}


# --- targets --------------------------------------------------------------------------


def find(cells: list[Cell], model: str, server: str, c: int) -> Cell:
    return next(x for x in cells if (x.model, x.server, x.concurrency) == (model, server, c))


def paired(a: Cell, b: Cell, attr: str) -> float:
    """Median over rounds of a/b, each ratio taken within one round."""
    return statistics.median(float(getattr(x, attr)) / float(getattr(y, attr))
                             for x, y in zip(a.samples, b.samples, strict=True))


def targets(cells: list[Cell], flip: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target as a wall-clock ratio and, where it applies, a CPU-time ratio."""
    out: list[dict[str, Any]] = []

    def add(name: str, measured: str, goal: str, wall: float, cpu: float | None,
            ok: Any) -> None:
        out.append({"target": name, "measured": measured, "goal": goal,
                    "ratio": round(wall, 3), "pass": bool(ok(wall)),
                    "cpu_ratio": None if cpu is None else round(cpu, 3),
                    "cpu_pass": None if cpu is None else bool(ok(cpu))})

    # issue 19's: against the minimal endpoint, at each concurrency it names
    for model, c, goal in (("small", 1, 1.0), ("small", 8, 1.0), ("small", 64, 3.0),
                           ("heavy", 1, 0.9)):
        mp, mini = find(cells, model, MODELPORT, c), find(cells, model, MINIMAL, c)
        add(f"{model} c={c}: modelport req/s / minimal FastAPI req/s",
            f"{mp.median('ok_per_s'):.0f} vs {mini.median('ok_per_s'):.0f} req/s",
            f">= {goal:g}", paired(mp, mini, "ok_per_s"),
            paired(mini, mp, "cpu_us_per_request"), lambda r, goal=goal: r >= goal)
    mp, fa = find(cells, "small", MODELPORT, 64), find(cells, "small", FASTAPI, 64)
    limit = find(cells, "small", NOOP, LIMIT_CONCURRENCY)
    add("small c=64: modelport req/s / no-op ASGI app req/s (the HTTP limit)",
        f"{mp.median('ok_per_s'):.0f} vs {limit.median('ok_per_s'):.0f} req/s", ">= 0.75",
        paired(mp, limit, "ok_per_s"), paired(limit, mp, "cpu_us_per_request"),
        lambda r: r >= 0.75)
    add("small c=64: modelport p99 / FastAPI p99",
        f"{mp.median('p99_ms'):.1f} vs {fa.median('p99_ms'):.1f} ms", "< 1",
        paired(mp, fa, "p99_ms"), None, lambda r: r < 1)
    heavy = find(cells, "heavy", MODELPORT, 64)
    walls = [s.ok_per_s / r["rows_per_s"] for s, r in zip(heavy.samples, heavy.raw, strict=True)]
    cpus = [r["cpu_ms_per_call"] * 1000 / r["size"] / s.cpu_us_per_request
            for s, r in zip(heavy.samples, heavy.raw, strict=True)]
    sizes = sorted({int(r["size"]) for r in heavy.raw})
    add("heavy c=64: modelport rows/s / raw predict rows/s at the formed batch size",
        f"{heavy.median('ok_per_s'):.0f} vs "
        f"{statistics.median(r['rows_per_s'] for r in heavy.raw):.0f} rows/s "
        f"(b={'/'.join(map(str, sizes))})", ">= 0.70",
        statistics.median(walls), statistics.median(cpus), lambda r: r >= 0.7)
    for model in ("small", "heavy"):
        on, off = find(cells, model, MODELPORT, 1), find(cells, model, BATCHING_OFF, 1)
        add(f"{model} c=1: batching on req/s / batching off req/s",
            f"{on.median('ok_per_s'):.0f} vs {off.median('ok_per_s'):.0f} req/s", ">= 0.90",
            paired(on, off, "ok_per_s"), paired(off, on, "cpu_us_per_request"),
            lambda r: r >= 0.9)
    out.append({"target": f"small c=64, alias moved {flip['flips']}x: failed requests",
                "measured": f"{flip['failed']} of {flip['requests']}", "goal": "0",
                "ratio": float(flip["failed"]), "pass": flip["failed"] == 0,
                "cpu_ratio": None, "cpu_pass": None})
    return out


# --- the report -----------------------------------------------------------------------


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    plan = result["plan"]
    table = Table(title=f"Serving batch-1 requests over loopback: medians of {plan['rounds']} "
                        f"run(s) of {plan['seconds']:g} s (wrk -t1 -cC)")
    columns = ("model", "server", "c", "req/s", "p50 ms", "p99 ms", "errors", "batch mean",
               "CPU us/req", "CPU busy", "queued")
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "server") else "right")
    for cell in result["runs"]:
        runs = cell["runs"]
        busy = statistics.median(r["cpu_s"] / r["seconds"] for r in runs)
        queued = statistics.median(r["queued_s"] / r["seconds"] for r in runs)
        batch = cell.get("batch_size", {}).get("mean")
        table.add_row(cell["model"], cell["server"], str(cell["concurrency"]),
                      f"{cell['req_s']:.0f}", f"{cell['p50_ms']:.2f}", f"{cell['p99_ms']:.2f}",
                      str(cell["errors"]), f"{batch:.1f}" if batch else "",
                      f"{cell['cpu_us_per_request']:.0f}", f"{busy:.0%}", f"{queued:.0%}")
    flip = result["alias_flip"]
    table.add_row("small", f"modelport, alias moved {flip['flips']}x", "64",
                  f"{flip['req_s']:.0f}", f"{flip['p50_ms']:.2f}", f"{flip['p99_ms']:.2f}",
                  str(flip["failed"]), "", "", "", "")
    console.print(table)

    raw = Table(title="Raw in-process predict + predict_proba on the server core "
                      "(after the runs; per-round timings at the formed sizes are in the JSON)")
    for col in ("model", "batch", "ms per call", "rows/s", "CPU ms per call", "rows per CPU s"):
        raw.add_column(col, justify="left" if col == "model" else "right")
    for model, sizes in result["raw_predict"].items():
        for key, t in sizes.items():
            size = f"{t['size']}" if int(key) else "1, predict only"
            raw.add_row(model, size, f"{t['ms_per_call']:.3f}",
                        f"{t['rows_per_s']:.0f}", f"{t['cpu_ms_per_call']:.3f}",
                        f"{t['rows_per_cpu_s']:.0f}")
    console.print(raw)

    goals = Table(title="Targets (medians of per-round ratios)")
    for col in ("target", "measured", "goal", "wall-clock", "", "CPU time", " "):
        goals.add_column(col, justify="left" if col in ("target", "measured") else "right")

    def mark(ok: bool | None) -> str:
        return "" if ok is None else "[green]pass[/]" if ok else "[red]MISS[/]"

    for t in result["targets"]:
        cpu = "" if t["cpu_ratio"] is None else f"{t['cpu_ratio']:.2f}"
        goals.add_row(t["target"], t["measured"], t["goal"], f"{t['ratio']:.2f}",
                      mark(t["pass"]), cpu, mark(t["cpu_pass"]))
    console.print(goals)


# --- entry points ---------------------------------------------------------------------


def preflight() -> str | None:
    if shutil.which("wrk") is None:
        return ("wrk is not installed; the benchmark drives its load with it. Install it:\n"
                "    sudo apt-get update && sudo apt-get install -y wrk     (Debian/Ubuntu)\n"
                "    brew install wrk                                       (macOS)\n"
                "then run this again.")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return "scikit-learn is missing: pip install -e '.[sklearn]'"
    return None


def versions() -> dict[str, str]:
    import fastapi
    import sklearn
    import uvicorn

    import modelport

    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True,
                                 check=False).stdout.splitlines()
    return {"python": platform.python_version(), "modelport": modelport.__version__,
            "scikit-learn": sklearn.__version__, "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__, "numpy": np.__version__,
            "wrk": wrk_version[0] if wrk_version else "?"}


def run(plan: Plan, tmp: Path) -> dict[str, Any]:
    home = tmp / "home"
    print("training and registering the models …", flush=True)
    subjects = register(home)
    cores = Cores.pick()
    started = time.time()
    load_before = os.getloadavg()
    cells: list[Cell] = []
    raw: dict[str, dict[int, dict[str, float]]] = {}
    for subject in subjects:
        print(f"{subject.key}: {subject.what}", flush=True)
        measured, raw[subject.key] = measure(subject, home, cores, plan, tmp)
        cells += measured
    print("small: the alias moves back and forth under c=64", flush=True)
    flip = alias_flip(subjects[0], home, cores, plan, tmp)
    return {
        "plan": vars(plan), "started": started, "seconds": round(time.time() - started, 1),
        "host": platform.node(), "cpus": os.cpu_count(), "pinned": bool(cores.load),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "versions": versions(),
        "models": {s.key: s.what for s in subjects},
        "runs": [c.as_json() for c in cells],
        "raw_predict": raw,
        "alias_flip": flip,
        "targets": targets(cells, flip),
    }


def run_worker(args: argparse.Namespace) -> int:
    home = Path(args.home)
    if args.worker == "modelport":
        servers.run_modelport(home, args.port, args.ref, batching=not args.no_batching,
                              poll_interval_s=args.poll,
                              keys=Path(args.keys) if args.keys else None,
                              on_loop=args.on_loop)
    elif args.worker in ("fastapi", "fastapi-minimal"):
        servers.run_fastapi(home, args.port, args.ref, minimal=args.worker == "fastapi-minimal")
    elif args.worker == "noop":
        servers.run_noop(args.port)
    else:
        servers.run_raw(home, args.ref, servers.dataset(args.dataset)[0])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one round")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, help="runs per configuration")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary registry and the server logs")
    # internal: what the child processes run
    parser.add_argument("--worker", help=argparse.SUPPRESS,
                        choices=["modelport", "fastapi", "fastapi-minimal", "noop", "raw"])
    for flag in ("--home", "--ref", "--dataset", "--keys"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("--no-batching", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--on-loop", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)

    problem = preflight()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    base = QUICK if args.quick else FULL
    plan = Plan(args.seconds or base.seconds, args.rounds or base.rounds, base.warmup,
                base.flip_seconds, base.flips, base.raw_seconds)
    tmp = Path(tempfile.mkdtemp(prefix="modelport-bench-"))
    try:
        result = run(plan, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
