"""Latency of `GET /users/{id}/recommendations?k=10` under concurrent load.

Target: p99 < 20 ms at concurrency 16. The server runs in processes of its own
(`music up --workers 2` by default: embedded mode, with the reference data: 5,000
users, 20,000 tracks, 1 million listens), and the load comes from another: wrk when it
is installed (C, so the load generator takes little CPU from the server; `apt-get
install wrk`), else an httpx loop, which takes a core itself and makes the numbers
much worse. wrk runs on the same machine as the server and shares its cores. Users are
drawn at random from the generated ids, 5% of them unknown (cold start); every request
runs the whole pipeline: history lookup, fold-in and scoring of 20,000 tracks, the
catalogue join and the impression log.

    python examples/music/bench/recommend.py                 # set up and start a server
    python examples/music/bench/recommend.py --workers 1     # one server process
    python examples/music/bench/recommend.py --url http://127.0.0.1:8000   # a running one

Prints a table: concurrency, requests, throughput, p50/p90/p99/max in ms, errors, and
the machine's load average before and after (other work on the machine shows there;
the results in bench/README.md, "Music example", were taken at 0.7-1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
USERS = 5_000
COLD_SHARE = 0.05

WRK_SCRIPT = """
local users = {}
init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  for i = 0, %(users)d - 1 do users[#users + 1] = string.format("u%%04d", i) end
  for i = 1, math.floor(%(users)d * %(cold)f) do users[#users + 1] = "new" .. i end
end
request = function()
  local user = users[math.random(#users)]
  return wrk.format("GET", "/users/" .. user .. "/recommendations?k=10")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %%d, "seconds": %%f, "p50": %%f, "p90": %%f, "p99": %%f, ' ..
    '"max": %%f, "errors": %%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the server at {url} was not ready after {timeout:.0f}s")


def run_wrk(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % {"users": USERS, "cold": COLD_SHARE})
    try:
        threads = max(1, min(2, concurrency))
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:.0f}s", "-s", f.name,
             "--timeout", "5s", url], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]))


async def httpx_load(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    import httpx

    users = [f"u{i:04d}" for i in range(USERS)] + [
        f"new{i}" for i in range(int(USERS * COLD_SHARE))]
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = await client.get(f"/users/{random.choice(users)}/recommendations?k=10")
            latencies.append((time.perf_counter() - started) * 1000)
            errors += response.status_code != 200

    limits = httpx.Limits(max_connections=concurrency)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=5) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]

    return {"requests": len(latencies), "seconds": time.monotonic() - started,
            "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": latencies[-1],
            "errors": errors}


def measure(url: str, concurrency: int, seconds: float, tool: str) -> dict[str, Any]:
    if tool == "wrk":
        return run_wrk(url, concurrency, seconds)
    return asyncio.run(httpx_load(url, concurrency, seconds))


def start_server(home: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    music = shutil.which("music") or str(Path(sys.executable).with_name("music"))
    log = (home / "server.log").open("wb")
    return subprocess.Popen([music, "up", "--home", str(home / ".modelport"), "--port", str(port),
                             "--workers", str(workers)],
                            cwd=home, stdout=log, stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--home", type=Path, default=Path(".bench-music"),
                        help="where the started server keeps its data (reused between runs)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes of the started server (music up --workers)")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--tool", choices=["wrk", "httpx"],
                        default="wrk" if shutil.which("wrk") else "httpx")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # the machine's own load, before ours adds to it
    server = None
    url = args.url
    if url is None:
        args.home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        print(f"starting music up in {args.home} (the first run generates, loads and trains: "
              "a few minutes)", flush=True)
        server = start_server(args.home.resolve(), port, args.workers)
    try:
        wait_ready(url, timeout=1800)
        measure(url, 4, 3, args.tool)  # warm-up: connections, caches, the batcher
        rows = [(c, measure(url, c, args.seconds, args.tool)) for c in args.concurrency]
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    served = "a running server" if args.url else f"music up --workers {args.workers}"
    print(f"\nGET /users/{{id}}/recommendations?k=10 ({served}; {args.tool}, "
          f"{args.seconds:.0f}s each, {os.cpu_count()} CPUs, load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after)\n")
    print(f"{'concurrency':>11} {'requests':>9} {'req/s':>7} {'p50 ms':>7} {'p90 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7} {'errors':>6}")
    for c, r in rows:
        print(f"{c:>11} {r['requests']:>9} {r['requests'] / r['seconds']:>7.0f} "
              f"{r['p50']:>7.2f} {r['p90']:>7.2f} {r['p99']:>7.2f} {r['max']:>7.1f} "
              f"{r['errors']:>6}")
    at16 = dict(rows).get(16)
    if at16 is not None:
        verdict = "met" if at16["p99"] < 20 else "NOT met"
        print(f"\ntarget p99 < 20 ms at concurrency 16: {verdict} ({at16['p99']:.2f} ms)")


if __name__ == "__main__":
    main()
