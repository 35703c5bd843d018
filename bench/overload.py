"""Overload: does the server keep its capacity when far more clients come than its
queue holds? One command:

    .venv/bin/python bench/overload.py [--seconds 5] [--rounds 2] [--pin]

Starts `modelport serve` on a python model that sleeps 20 ms a call, with
`batching: {max_batch_size: 1, max_delay_ms: 0, max_queue: 8}` (capacity about 50
answers a second), measures the capacity at 8 connections (the queue's size: nothing
is refused), then at 4x, 8x and 16x the queue in connections. The load comes from a
separate process (`--load`): closed-loop asyncio clients on raw HTTP/1.1 keep-alive
connections, each sending its next request as soon as it has an answer (a refused
client retries at once, the worst case). `--pin` runs the server on core 1 and the
load on core 0 (`taskset`). Rounds alternate the connection counts, so a shared
machine's weather hits each alike. Prints a table of ratios against the capacity
measured in the same run, and the CPU time the server and the load spent per answer
(from /proc and getrusage: under overload nearly every answer is a refusal, and in a
closed loop the 503 latency is about the connections times the larger of the two).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
QUEUE = 8
BODY = b'{"instances": [[1.0, 2.0, 3.0]]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the load generator (runs in its own process) -----------------------------------

async def _client(port: int, until: float, out: dict[str, list[float]],
                  errors: list[str]) -> None:
    request = (b"POST /models/sleeper/predict HTTP/1.1\r\nHost: bench\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(BODY), BODY))
    reader = writer = None
    while time.monotonic() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = lines[0].split(b" ")[1].decode()
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"connection" and b"close" in value.lower():
                    close = True
            await reader.readexactly(length)
            out.setdefault(status, []).append(time.perf_counter() - started)
            if close:
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors.append(type(exc).__name__)
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _load(port: int, connections: int, seconds: float) -> dict[str, object]:
    out: dict[str, list[float]] = {}
    errors: list[str] = []
    until = time.monotonic() + seconds
    await asyncio.gather(*(_client(port, until, out, errors) for _ in range(connections)))
    return {"latencies": out, "errors": errors, "seconds": seconds}


def load_main(port: int, connections: int, seconds: float, out: str) -> None:
    import uvloop

    before = resource.getrusage(resource.RUSAGE_SELF)
    result = uvloop.run(_load(port, connections, seconds))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["load_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # a file, not stdout: the event loop may leave stdout non-blocking, and a large
    # result written to a full pipe then comes back cut short
    Path(out).write_text(json.dumps(result))


# --- the plan -----------------------------------------------------------------------

def quantile(values: list[float], q: float) -> float:
    """The q quantile of latencies in seconds, in ms."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


def p99(values: list[float]) -> float:
    return quantile(values, 0.99)


def pinned(core: int | None) -> list[str]:
    return ["taskset", "-c", str(core)] if core is not None else []


def start_server(home: Path, port: int, core: int | None) -> subprocess.Popen[bytes]:
    # the sleeper model's module is here; a PYTHONPATH of the caller's is kept after it
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "MODELPORT_HOME": str(home), "PYTHONPATH": path,
           "MODELPORT_BATCHING__MAX_BATCH_SIZE": "1", "MODELPORT_BATCHING__MAX_DELAY_MS": "0",
           "MODELPORT_BATCHING__MAX_QUEUE": str(QUEUE), "MODELPORT_SERVER__ACCESS_LOG": "false"}
    log = tempfile.TemporaryFile()  # noqa: SIM115 (the server writes to it while it runs)
    proc = subprocess.Popen(
        [*pinned(core), sys.executable, "-m", "modelport", "serve", "sleeper:1", "--trusted",
         "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if healthy(port):
            return proc
        if proc.poll() is not None:
            log.seek(0)
            said = log.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"the server exited before it was ready:\n{said}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server was not ready in 60 s")


def healthy(port: int) -> bool:
    try:
        ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5)
        answer = httpx.post(f"http://127.0.0.1:{port}/models/sleeper/predict",
                            content=BODY, headers={"content-type": "application/json"},
                            timeout=5)
    except httpx.TransportError:
        return False
    return ready.status_code == 200 and answer.status_code == 200


def cpu_s(pid: int) -> float:
    """A process's user + system CPU time so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(port: int, connections: int, seconds: float, core: int | None,
             server: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "load.json"
        started = cpu_s(server)
        subprocess.run(
            [*pinned(core), sys.executable, __file__, "--load", str(port), str(connections),
             str(seconds), str(out)], check=True)
        result: dict[str, object] = json.loads(out.read_text())
    result["server_cpu_s"] = cpu_s(server) - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pin", action="store_true",
                        help="server on core 1, load on core 0 (taskset)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import numpy as np
    from overload_model import Sleeper

    from modelport import Registry, Settings

    server_core, load_core = (1, 0) if args.pin else (None, None)
    plan = [QUEUE, 4 * QUEUE, 8 * QUEUE, 16 * QUEUE]
    runs: dict[int, list[dict[str, object]]] = {c: [] for c in plan}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        with Registry(settings=Settings(home=home)) as reg:
            reg.register("sleeper", Sleeper(), sample_input=np.ones((2, 3)))
        port = free_port()
        proc = start_server(home, port, server_core)
        try:
            for round_ in range(args.rounds):
                order = plan if round_ % 2 == 0 else plan[::-1]
                for c in order:
                    runs[c].append(run_load(port, c, args.seconds, load_core, proc.pid))
            still = healthy(port)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    report(runs, plan, still, args)


def report(runs: dict[int, list[dict[str, object]]], plan: list[int], still: bool,
           args: argparse.Namespace) -> None:
    def stats(c: int) -> tuple[float, float, float, float, int]:
        ok, refused, errors, seconds = [], [], 0, 0.0
        for run in runs[c]:
            latencies: dict[str, list[float]] = run["latencies"]  # type: ignore[assignment]
            ok += latencies.get("200", [])
            refused += latencies.get("503", [])
            errors += len(run["errors"]) + sum(  # type: ignore[arg-type]
                len(v) for k, v in latencies.items() if k not in ("200", "503"))
            seconds += float(run["seconds"])  # type: ignore[arg-type]
        return len(ok) / seconds, p99(ok), quantile(refused, 0.5), p99(refused), errors

    def cpu_us(c: int, whose: str) -> float:
        """CPU µs per answer (any status) at `c` connections, `whose`: server or load."""
        spent = sum(float(run[f"{whose}_cpu_s"]) for run in runs[c])  # type: ignore[arg-type]
        answers = sum(len(v) for run in runs[c]
                      for v in run["latencies"].values())  # type: ignore[attr-defined]
        return spent / max(1, answers) * 1e6

    capacity, cap_p99, _, _, _ = stats(plan[0])
    print(f"model: 20 ms a call, max_batch_size 1, max_queue {QUEUE}; "
          f"{args.rounds} rounds of {args.seconds:g} s; pinned: {'yes' if args.pin else 'no'}")
    print(f"capacity (c={plan[0]}): {capacity:.1f} req/s, p99 {cap_p99:.0f} ms")
    print()
    print("| connections | goodput req/s | goodput / capacity | admitted p99 ms "
          "| admitted p99 / p99 at capacity | 503 p50 ms | 503 p99 ms | other errors "
          "| server CPU µs / answer | load CPU µs / answer |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in plan:
        goodput, ok_p99, refused_p50, refused_p99, errors = stats(c)
        refused = "- | -" if refused_p99 != refused_p99 else \
            f"{refused_p50:.1f} | {refused_p99:.1f}"
        print(f"| {c} ({c // QUEUE}x queue) | {goodput:.1f} | {goodput / capacity:.0%} "
              f"| {ok_p99:.0f} | {ok_p99 / cap_p99:.2f}x | {refused} | {errors} "
              f"| {cpu_us(c, 'server'):.0f} | {cpu_us(c, 'load'):.0f} |")
    print()
    print(f"healthy afterwards: {'yes' if still else 'NO'}")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--load":
        load_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    else:
        main()
