"""Where a model runs: `on_loop: auto` against a thread and the event loop, forced.

    .venv/bin/python bench/placement.py                      # about 5 minutes
    .venv/bin/python bench/placement.py --models small --conns 64 --rounds 3
    .venv/bin/python bench/placement.py --inproc             # about 2 minutes

Starts the benchmark's modelport server (`serving.py --worker modelport`, default
settings, access log off) on the two models `bench/serving.py` trains, once per
placement (`on_loop: auto`, `false`, `true`), pinned to the second core with wrk on
the first. Placements alternate within each round (the order reverses every round);
medians over rounds. Prints req/s, p99, the batch size the batcher formed, the
server's CPU per request and the core's busy share, what `auto` chose (from
readiness) and the forced placements' req/s against `auto`'s.

`--inproc` leaves HTTP out: the three placements of each model are three data planes
in this process, pinned to one core, each sent the same one-row requests at each
concurrency through `DataPlane.predict` (validation, batcher, model), in turn, many
short times; it prints the CPU time per request (this process's, every thread) and
the requests per second, medians, and the forced placements' against `auto`'s, the
median of the ratios taken within each turn. What a request costs the core, with the
parsing and the sockets left out, so the thread hop's share of it shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import Cores, batch_histogram, http, launch, stop, wait_ready, write_script, wrk
from serving import register

PLACEMENTS = {"auto": "auto", "thread": "false", "loop": "true"}


def chosen(port: int, name: str) -> dict[str, Any]:
    """What the server says about the model's placement (GET /v2/health/ready)."""
    ready = json.loads(http("GET", f"http://127.0.0.1:{port}/v2/health/ready"))
    placement: dict[str, Any] = ready["models"][name]["placement"]
    return placement


async def turn(dp: Any, deployment: Any, batches: list[Any], conns: int,
               seconds: float) -> tuple[float, float]:
    """`conns` callers sending one-row requests for `seconds`: (CPU µs per request,
    requests per second)."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def caller(n: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await dp.predict(deployment, batches[(n + done) % len(batches)])
            done += 1

    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller(n) for n in range(conns)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return cpu / done * 1e6, done / wall


async def inproc(home: Path, keys: list[str], conns: list[int], rounds: int,
                 seconds: float) -> None:
    import servers

    from modelport.config import ServiceConfig
    from modelport.dataplane import DataPlane, ModelConfig
    from modelport.registry import Registry

    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[-1]})  # the loop and the lanes share one core
    names = {"small": "bench-small", "heavy": "bench-heavy"}
    settings = servers.settings_for(home)
    registry = Registry(settings=settings)
    planes: dict[str, DataPlane] = {}
    for label, on_loop in PLACEMENTS.items():
        models = [ModelConfig.model_validate({"ref": f"{names[k]}@production",
                                              "on_loop": on_loop}) for k in keys]
        planes[label] = DataPlane(registry, settings, ServiceConfig(models=models).models)
        await planes[label].start(follow=False)
    rows = {k: servers.dataset(k)[0] for k in keys}
    results: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    for key in keys:
        placement = planes["auto"].deployment(names[key]).placement
        print(f"auto placed {key}: {placement.describe()}", flush=True)
        for c in conns:
            for r in range(rounds):
                order = list(planes.items()) if r % 2 == 0 else list(planes.items())[::-1]
                for label, dp in order:
                    deployment = dp.deployment(names[key])
                    sig = deployment.model.signature
                    batches = [sig.decode(rows[key][i:i + 1]) for i in range(64)]
                    results.setdefault((key, c, label), []).append(
                        await turn(dp, deployment, batches, c, seconds))
    for dp in planes.values():
        await dp.stop()
    registry.close()
    print(f"\nload average {os.getloadavg()[0]:.1f}; {rounds} turns of {seconds} s per "
          "cell; medians\n")
    labels = list(PLACEMENTS)
    print("| model | c | " + " | ".join(f"{t}: CPU µs/req, req/s" for t in labels)
          + " | " + " | ".join(f"{t} / auto: CPU, req/s" for t in labels[1:]) + " |")
    print("|---|---:|" + "---:|" * (2 * len(labels) - 1))
    for key in keys:
        for c in conns:
            cells = [f"{statistics.median(x[0] for x in results[(key, c, t)]):.0f}, "
                     f"{statistics.median(x[1] for x in results[(key, c, t)]):.0f}"
                     for t in labels]
            ratios = []
            for t in labels[1:]:
                pairs = list(zip(results[(key, c, t)], results[(key, c, "auto")], strict=True))
                ratios.append(f"{statistics.median(a[0] / b[0] for a, b in pairs):.2f}, "
                              f"{statistics.median(a[1] / b[1] for a, b in pairs):.2f}")
            print(f"| {key} | {c} | " + " | ".join(cells + ratios) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small,heavy")
    parser.add_argument("--conns", default="1,8,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3, help="per wrk run (whole seconds)")
    parser.add_argument("--inproc", action="store_true",
                        help="the data plane in this process, without HTTP (see above)")
    parser.add_argument("--turn-seconds", type=float, default=0.5,
                        help="with --inproc: seconds per placement per turn")
    args = parser.parse_args(argv)
    if args.inproc:
        tmp = Path(tempfile.mkdtemp(prefix="modelport-placement-"))
        try:
            print("training and registering the models …", flush=True)
            register(tmp / "home")
            asyncio.run(inproc(tmp / "home", args.models.split(","),
                               [int(c) for c in args.conns.split(",")],
                               max(args.rounds, 5), args.turn_seconds))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is missing: sudo apt-get install -y wrk", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="modelport-placement-"))
    try:
        print("training and registering the models …", flush=True)
        subjects = {s.key: s for s in register(tmp / "home")}
        cores = Cores.pick()
        conns = [int(c) for c in args.conns.split(",")]
        results: dict[tuple[str, int, str], list[tuple[float, ...]]] = {}
        auto: dict[str, list[str]] = {}
        for r in range(args.rounds):
            order = list(PLACEMENTS.items())
            order = order if r % 2 == 0 else order[::-1]
            for key in args.models.split(","):
                subject = subjects[key]
                script = write_script(tmp / f"{key}.lua", subject.body)
                for label, on_loop in order:
                    server = launch(cores, f"modelport-{label}",
                                    ["modelport", "--on-loop", on_loop], tmp / "home",
                                    subject.ref, tmp)
                    try:
                        wait_ready(server, subject.body)
                        placement = chosen(server.port, subject.name)
                        if label == "auto":
                            auto.setdefault(key, []).append(
                                f"{placement['where']} {placement['us_per_call']}")
                        wrk(cores, server, script, 8, 1)  # warm-up
                        for c in conns:
                            before = batch_histogram(server.port)
                            sample = wrk(cores, server, script, c, args.seconds)
                            after = batch_histogram(server.port)
                            calls = max(after.count - before.count, 1)
                            results.setdefault((key, c, label), []).append((
                                sample.ok_per_s, sample.p99_ms,
                                (after.total - before.total) / calls,
                                sample.cpu_us_per_request, sample.cpu_s / sample.seconds))
                    finally:
                        stop(server.proc)
        print(f"\nload average {os.getloadavg()[0]:.1f}; medians of {args.rounds} rounds "
              f"of {args.seconds} s")
        for key, seen in auto.items():
            print(f"auto placed {key}: " + "; ".join(seen))
        labels = list(PLACEMENTS)
        print("\n| model | c | " + " | ".join(
            f"{t}: req/s, p99 ms, batch, CPU µs/req, busy" for t in labels)
            + " | " + " | ".join(f"{t} / auto" for t in labels[1:]) + " |")
        print("|---|---:|" + "---:|" * (2 * len(labels) - 1))
        for key in args.models.split(","):
            for c in conns:
                med = {t: [statistics.median(x[i] for x in results[(key, c, t)])
                           for i in range(5)] for t in labels}
                cells = [f"{m[0]:.0f}, {m[1]:.1f}, {m[2]:.1f}, {m[3]:.0f}, {m[4]:.0%}"
                         for m in med.values()]
                # the ratio of the medians of each round's own ratio: rounds run minutes
                # apart on a shared machine, placements within a round seconds apart
                ratios = [statistics.median(
                    a[0] / b[0] for a, b in zip(results[(key, c, t)],
                                                results[(key, c, "auto")], strict=True))
                    for t in labels[1:]]
                print(f"| {key} | {c} | " + " | ".join(cells + [f"{x:.2f}" for x in ratios])
                      + " |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
