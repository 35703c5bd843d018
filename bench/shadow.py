"""What a shadow costs the callers: p50 and p99 of single-row predictions over HTTP
from a server without a shadow, with a shadow that raises on every call, and with one
that sleeps 1 s a call; the difference to the no-shadow server is from the same run.

    .venv/bin/python bench/shadow.py [--seconds 10] [--rate 200] [--rounds 2] [--pin]

Each server is `modelport serve --config` of a modelport.yaml in a throwaway home. The
load is open-loop, as production traffic is: requests are due at a fixed `--rate`,
spread over `--connections` raw HTTP/1.1 keep-alive connections (no client library in
the measurement), and a request's latency runs from when it was due, so a stall of
the server is counted for every request it delayed, not hidden by a client that waits.
`--pin` runs the servers on core 1 and this load on core 0 (`taskset`). Each round
runs every server, starting with another one each time, so drift on a shared machine
is spread over all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
SHADOWS = {"none": None, "raising": "raises:1", "sleeping 1 s": "sleeps:1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def register(home: Path) -> list[float]:
    sys.path.insert(0, str(HERE))
    from shadow_models import Raises, Sleeps

    from modelport import Registry, Settings

    x, y = load_breast_cancer(return_X_y=True)
    with Registry(settings=Settings(home=home)) as reg:
        model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
        reg.set_alias("cancer", "production",
                      reg.register("cancer", model, sample_input=x[:5]).version)
        reg.register("raises", Raises(), sample_input=x[:2])
        reg.register("sleeps", Sleeps(), sample_input=x[:2])
    return [float(v) for v in x[0]]


def start(home: Path, label: str, shadow: str | None, pin: bool
          ) -> tuple[subprocess.Popen[str], int]:
    config = home / f"{label.split()[0]}.yaml"
    policy = f"\n    shadow: {{ref: '{shadow}', timeout_s: 2}}" if shadow else ""
    config.write_text(f"models:\n  - ref: cancer@production\n    trusted: true{policy}\n")
    port = free_port()
    env = {**os.environ, "MODELPORT_HOME": str(home), "PYTHONPATH": str(HERE),
           "MODELPORT_MONITORING__SAMPLE_RATE": "0", "MODELPORT_SERVER__ACCESS_LOG": "false"}
    command = [sys.executable, "-m", "modelport", "serve", "--config", str(config),
               "--port", str(port)]
    proc = subprocess.Popen((["taskset", "-c", "1"] if pin else []) + command, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while "serving" not in (line := proc.stderr.readline()):
        if not line:
            raise SystemExit(f"the {label} server exited before it was ready")
    return proc, port


async def load(port: int, row: list[float], seconds: float, rate: float,
               connections: int) -> tuple[list[float], int]:
    """Open-loop load: request i is due at i / rate; its latency counts from then."""
    body = json.dumps({"instances": [row]}).encode()
    request = (b"POST /models/cancer/predict HTTP/1.1\r\nHost: bench\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(body), body))
    latencies: list[float] = []
    errors = 0
    total = int(seconds * rate)
    start_at = time.perf_counter() + 0.05

    async def connection(first: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(first, total, connections):
            due = start_at + i / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - due)
            errors += not head.startswith(b"HTTP/1.1 200")
        writer.close()

    await asyncio.gather(*(connection(j) for j in range(connections)))
    return latencies, errors


def cpu_s(pid: int) -> float:
    """A process's user + system CPU time so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shadow_counts(port: int) -> str:
    page = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    counts = {}
    for line in page.splitlines():
        if line.startswith("modelport_shadow_calls_total{"):
            outcome = line.split('outcome="')[1].split('"')[0]
            counts[outcome] = int(float(line.rsplit(" ", 1)[1]))
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0,
                        help="requests a second, well under the server's capacity")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pin", action="store_true",
                        help="servers on core 1, the load on core 0 (taskset)")
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        row = register(home)
        servers = {label: start(home, label, shadow, args.pin)
                   for label, shadow in SHADOWS.items()}
        try:
            runs: dict[str, list[float]] = {label: [] for label in SHADOWS}
            errors = dict.fromkeys(SHADOWS, 0)
            cpu = dict.fromkeys(SHADOWS, 0.0)
            order = list(servers)
            for i in range(args.rounds):  # each round starts with another server
                for label in order[i % len(order):] + order[:i % len(order)]:
                    proc, port = servers[label]
                    asyncio.run(load(port, row, 1.0, args.rate, args.connections))  # warm-up
                    before = cpu_s(proc.pid)
                    latencies, failed = asyncio.run(
                        load(port, row, args.seconds, args.rate, args.connections))
                    cpu[label] += cpu_s(proc.pid) - before
                    runs[label] += latencies
                    errors[label] += failed
            base = np.percentile(runs["none"], [50, 99]) * 1000
            print(f"open loop at {args.rate:g} requests/s, {args.connections} connections, "
                  f"{args.rounds} x {args.seconds:g} s a server, load average "
                  f"{os.getloadavg()[0]:.1f}")
            print(f"{'shadow':<14}{'requests':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}"
                  f"{'p99 +ms':>9}{'CPU µs':>8}  shadow calls")
            for label, latencies in runs.items():
                p50, p99 = np.percentile(latencies, [50, 99]) * 1000
                print(f"{label:<14}{len(latencies):>10,}{errors[label]:>8}{p50:>9.2f}"
                      f"{p99:>9.2f}{p99 - base[1]:>+9.2f}"
                      f"{cpu[label] / len(latencies) * 1e6:>8.0f}  "
                      f"{shadow_counts(servers[label][1])}")
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
