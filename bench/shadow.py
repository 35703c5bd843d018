"""What a shadow costs the callers: p50 and p99 of single-row predictions over HTTP
from a server without a shadow, with a shadow that raises on every call, and with one
that sleeps 1 s a call; the ratio to the no-shadow server is from the same run.

    .venv/bin/python bench/shadow.py [--seconds 10] [--concurrency 8] [--rounds 2]

Each server is `modelport serve --config` of a modelport.yaml in a throwaway home; the
load is an asyncio httpx client in this process, `--concurrency` requests in flight,
timed per request. Each round runs every server, starting with another one each time,
so drift on a shared machine is spread over all of them.
"""

from __future__ import annotations

import argparse
import asyncio
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


def start(home: Path, label: str, shadow: str | None) -> tuple[subprocess.Popen[str], str]:
    config = home / f"{label.split()[0]}.yaml"
    policy = f"\n    shadow: {{ref: '{shadow}', timeout_s: 2}}" if shadow else ""
    config.write_text(f"models:\n  - ref: cancer@production\n    trusted: true{policy}\n")
    port = free_port()
    env = {**os.environ, "MODELPORT_HOME": str(home), "PYTHONPATH": str(HERE),
           "MODELPORT_MONITORING__SAMPLE_RATE": "0", "MODELPORT_SERVER__ACCESS_LOG": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "modelport", "serve", "--config",
                             str(config), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while "serving" not in (line := proc.stderr.readline()):
        if not line:
            raise SystemExit(f"the {label} server exited before it was ready")
    return proc, f"http://127.0.0.1:{port}"


async def load(url: str, row: list[float], seconds: float, concurrency: int
               ) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    body = {"instances": [row]}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def caller() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post("/models/cancer/predict", json=body)
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 200
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies, errors


def shadow_counts(url: str) -> str:
    page = httpx.get(f"{url}/metrics").text
    counts = {}
    for line in page.splitlines():
        if line.startswith("modelport_shadow_calls_total{"):
            outcome = line.split('outcome="')[1].split('"')[0]
            counts[outcome] = int(float(line.rsplit(" ", 1)[1]))
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        row = register(home)
        servers = {label: start(home, label, shadow) for label, shadow in SHADOWS.items()}
        try:
            runs: dict[str, list[float]] = {label: [] for label in SHADOWS}
            errors = dict.fromkeys(SHADOWS, 0)
            order = list(servers)
            for i in range(args.rounds):  # each round starts with another server
                for label in order[i % len(order):] + order[:i % len(order)]:
                    url = servers[label][1]
                    asyncio.run(load(url, row, 1.0, args.concurrency))  # warm-up
                    latencies, failed = asyncio.run(
                        load(url, row, args.seconds, args.concurrency))
                    runs[label] += latencies
                    errors[label] += failed
            base = np.percentile(runs["none"], [50, 99]) * 1000
            print(f"{'shadow':<14}{'requests':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}"
                  f"{'p99 ratio':>11}  shadow calls")
            for label, latencies in runs.items():
                p50, p99 = np.percentile(latencies, [50, 99]) * 1000
                print(f"{label:<14}{len(latencies):>10,}{errors[label]:>8}{p50:>9.2f}"
                      f"{p99:>9.2f}{p99 / base[1]:>11.2f}  "
                      f"{shadow_counts(servers[label][1])}")
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
