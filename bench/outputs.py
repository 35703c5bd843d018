"""What asking for fewer outputs saves: the heavy model (HistGradientBoosting on
digits) asked for its label alone, or for its label and probabilities.

Two parts, each printed as a table:
- in-process: CPU per `Model.predict_batch` call at batch 1 and 32;
- served: one modelport server (`bench/serving.py --worker modelport`, pinned to its
  own core when there are two), one caller at a time on the JSON API, server CPU per
  request read from /proc.

To measure another modelport (the code before a change), put its source first on the
path: `PYTHONPATH=OTHER/src .venv/bin/python bench/outputs.py`. Code from before
output selection ignores what is asked and computes both.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import Cores, cpu_snapshot, launch, stop, wait_ready
from servers import dataset, settings_for

import modelport

ASKS: dict[str, list[str] | None] = {"label": ["predictions"], "label + probabilities": None}


def register(home: Path) -> str:
    from sklearn.ensemble import HistGradientBoostingClassifier

    from modelport.registry import Registry

    x, y = dataset("heavy")
    fitted = HistGradientBoostingClassifier(random_state=0).fit(x, y)  # as peerbench's
    with Registry(settings=settings_for(home)) as registry:
        version = registry.register("heavy", fitted, sample_input=x[:5]).version
        registry.set_alias("heavy", "production", version)
    return "heavy@production"


def in_process(home: Path, ref: str, seconds: float) -> list[dict[str, Any]]:
    from modelport.registry import Registry

    x, _ = dataset("heavy")
    with Registry(settings=settings_for(home)) as registry:
        model = registry.load(ref)
    rows = []
    for size in (1, 32):
        batches = [model.signature.decode(x[i:i + size]) for i in range(0, 320, size)]
        for what, ask in ASKS.items():
            outputs = frozenset(ask) if ask else None
            call: Any = functools.partial(model.predict_batch, outputs=outputs)
            try:
                call(batches[0])
            except TypeError:  # before output selection: always both
                call = model.predict_batch
            n, started, cpu = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - started < seconds:
                call(batches[n % len(batches)])
                n += 1
            ms = (time.process_time() - cpu) / n * 1000
            rows.append({"batch": size, "asked": what, "cpu_ms_per_call": ms,
                         "rows_per_cpu_s": size * 1000 / ms})
    return rows


def served(home: Path, ref: str, seconds: float, logs: Path) -> list[dict[str, Any]]:
    cores = Cores.pick()
    server = launch(cores, "modelport", ["modelport"], home, ref, logs)
    x, _ = dataset("heavy")
    rows = []
    try:
        wait_ready(server, "")
        conn = http.client.HTTPConnection("127.0.0.1", server.port)
        for what, ask in ASKS.items():
            bodies = [json.dumps({"instances": [r], **({"outputs": ask} if ask else {})})
                      for r in x[:200].tolist()]
            for body in bodies[:50]:  # warm-up
                post(conn, server.path, body)
            n, started = 0, time.perf_counter()
            cpu, _ = cpu_snapshot(server.proc.pid)
            while time.perf_counter() - started < seconds:
                post(conn, server.path, bodies[n % len(bodies)])
                n += 1
            elapsed = time.perf_counter() - started
            used = cpu_snapshot(server.proc.pid)[0] - cpu
            rows.append({"asked": what, "requests": n, "req_per_s": n / elapsed,
                         "server_cpu_ms_per_request": used / n * 1000})
    finally:
        stop(server.proc)
    return rows


def say(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def post(conn: http.client.HTTPConnection, path: str, body: str) -> None:
    conn.request("POST", path, body, {"content-type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {data[:300]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelport-bench-") as tmp:
        home = Path(tmp)
        say("training and registering the heavy model")
        ref = register(home)
        say("in-process")
        inproc = in_process(home, ref, args.seconds)
        say("served")
        http_rows = served(home, ref, args.seconds, home)
    print(f"modelport from {Path(modelport.__file__).parent}\n")
    print("| in-process, batch | asked | CPU ms per call | rows per CPU s |\n|---|---|---:|---:|")
    for r in inproc:
        print(f"| {r['batch']} | {r['asked']} | {r['cpu_ms_per_call']:.2f} | "
              f"{r['rows_per_cpu_s']:,.0f} |")
    print("\n| served, c=1, JSON API | asked | req/s | server CPU ms per request |"
          "\n|---|---|---:|---:|")
    for r in http_rows:
        print(f"| heavy | {r['asked']} | {r['req_per_s']:,.0f} | "
              f"{r['server_cpu_ms_per_request']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"in_process": inproc, "served": http_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
