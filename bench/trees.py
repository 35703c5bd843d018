"""Serving throughput of this source tree against other git revisions, in one run.

    .venv/bin/python bench/trees.py eef658c ccb0d4a           # about 4 minutes
    .venv/bin/python bench/trees.py HEAD~3 --models small --conns 64 --rounds 3

Exports each revision's `src/` with `git archive` into a temporary folder and starts
the benchmark's modelport server (`serving.py --worker modelport`, default settings,
access log off) from each tree in turn, on one registry of the two models
`bench/serving.py` trains, pinned to the second core with wrk on the first. Trees
alternate within each round (the order reverses every round); medians over rounds.
Prints req/s, p99, the batch size the batcher formed and the server core's busy share
per tree, and each tree's req/s against the first revision's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import Cores, batch_histogram, launch, stop, wait_ready, write_script, wrk
from serving import register

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def export(revision: str, into: Path) -> str:
    """`revision`'s src/ under `into`; returns the folder to put on PYTHONPATH."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into / "src")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+", help="git revisions to compare with this tree")
    parser.add_argument("--models", default="small,heavy")
    parser.add_argument("--conns", default="1,8,64")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=3, help="per wrk run (whole seconds)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is missing: sudo apt-get install -y wrk", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="modelport-trees-"))
    try:
        trees = {rev: export(rev, tmp / f"tree{i}") for i, rev in enumerate(args.revisions)}
        trees["this tree"] = str(ROOT / "src")
        print("training and registering the models …", flush=True)
        subjects = {s.key: s for s in register(tmp / "home")}
        cores = Cores.pick()
        conns = [int(c) for c in args.conns.split(",")]
        results: dict[tuple[str, int, str], list[tuple[float, float, float, float]]] = {}
        for r in range(args.rounds):
            order = list(trees.items())
            order = order if r % 2 == 0 else order[::-1]
            for key in args.models.split(","):
                subject = subjects[key]
                script = write_script(tmp / f"{key}.lua", subject.body)
                for label, src in order:
                    os.environ["PYTHONPATH"] = src  # the child imports this tree's modelport
                    server = launch(cores, "modelport", ["modelport"], tmp / "home",
                                    f"{subject.name}@production", tmp)
                    try:
                        wait_ready(server, subject.body)
                        wrk(cores, server, script, 8, 1)  # warm-up
                        for c in conns:
                            before = batch_histogram(server.port)
                            sample = wrk(cores, server, script, c, args.seconds)
                            after = batch_histogram(server.port)
                            calls = max(after.count - before.count, 1)
                            results.setdefault((key, c, label), []).append((
                                sample.ok_per_s, sample.p99_ms,
                                (after.total - before.total) / calls,
                                sample.cpu_s / sample.seconds))
                    finally:
                        stop(server.proc)
        print(f"\nload average {os.getloadavg()[0]:.1f}; medians of {args.rounds} rounds "
              f"of {args.seconds} s\n")
        labels = list(trees)
        print("| model | c | " + " | ".join(f"{t}: req/s, p99 ms, batch, busy" for t in labels)
              + " | " + " | ".join(f"{t} / {labels[0]}" for t in labels[1:]) + " |")
        print("|---|---:|" + "---:|" * (2 * len(labels) - 1))
        for key in args.models.split(","):
            for c in conns:
                med = {t: [statistics.median(x[i] for x in results[(key, c, t)])
                           for i in range(4)] for t in labels}
                cells = [f"{m[0]:.0f}, {m[1]:.1f}, {m[2]:.1f}, {m[3]:.0%}"
                         for m in med.values()]
                ratios = [f"{med[t][0] / med[labels[0]][0]:.2f}" for t in labels[1:]]
                print(f"| {key} | {c} | " + " | ".join(cells + ratios) + " |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
