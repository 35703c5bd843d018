"""The server's CPU time per refusal: `modelport serve` with its queue held full (a model,
named `sleeper` as in overload.py, that holds every call until the run ends;
`max_queue: 8`), and closed-loop clients (bench/overload.py's load) whose every request
is refused. One command:

    .venv/bin/python bench/refusal_cost.py [--connections 128] [--seconds 3] [--runs 3]

The server runs on core 1 and the load on core 0 (`taskset`). For each run it prints the
server's CPU µs per refusal (user and system, from /proc) and the load's own CPU µs per
answer (getrusage): in a closed loop the 503 latency is about the connections times the
larger of the two. CPU time, not wall time, so a machine shared with other work still
gives a usable number.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
BODY = b'{"instances": [[1.0, 2.0, 3.0]]}'
REQUEST = (b"POST /models/sleeper/predict HTTP/1.1\r\nHost: bench\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


def cpu(pid: int) -> tuple[float, float]:
    """A process's user and system CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import numpy as np
    from overload import free_port
    from overload_model import Gated

    from modelport import Registry, Settings

    with tempfile.TemporaryDirectory() as tmp:
        home, gate = Path(tmp) / "home", Path(tmp) / "gate"
        with Registry(settings=Settings(home=home)) as reg:
            reg.register("sleeper", Gated(), sample_input=np.ones((2, 3)))
        port = free_port()
        path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "MODELPORT_HOME": str(home), "PYTHONPATH": path,
               "MODELPORT_BENCH_GATE": str(gate), "MODELPORT_BATCHING__MAX_BATCH_SIZE": "1",
               "MODELPORT_BATCHING__MAX_DELAY_MS": "0", "MODELPORT_BATCHING__MAX_QUEUE": "8",
               "MODELPORT_SERVER__ACCESS_LOG": "false"}
        proc = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-m", "modelport", "serve",
                                 "sleeper:1", "--trusted", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        held: list[socket.socket] = []
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while not _ready(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            gate.touch()
            # more than the model and its queue hold: the rest of these are refused
            for _ in range(16):
                held.append(socket.create_connection(("127.0.0.1", port)))
                held[-1].sendall(REQUEST)
            while not _refused(url):
                if time.monotonic() > deadline:
                    raise SystemExit("the queue did not fill")
                time.sleep(0.05)
            print(f"{args.connections} connections, {args.seconds:g} s a run; "
                  "CPU µs per refusal (server: user + system) and per answer (load)")
            for _ in range(args.runs):
                _run(proc.pid, port, args)
        finally:
            gate.unlink(missing_ok=True)
            for sock in held:
                sock.close()
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _refused(url: str) -> bool:
    try:
        return httpx.post(f"{url}/models/sleeper/predict", content=BODY, timeout=1,
                          headers={"content-type": "application/json"}).status_code == 503
    except httpx.TimeoutException:  # admitted before the held ones came: it is held too
        return False


def _run(server: int, port: int, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "load.json"
        before = cpu(server)
        subprocess.run(["taskset", "-c", "0", sys.executable, str(HERE / "overload.py"), "--load",
                        str(port), str(args.connections), str(args.seconds), str(out)],
                       check=True)
        after = cpu(server)
        result = json.loads(out.read_text())
    refused = len(result["latencies"].get("503", []))
    others = sum(len(v) for k, v in result["latencies"].items() if k != "503")
    user, system = ((a - b) / max(1, refused) * 1e6 for a, b in zip(after, before, strict=True))
    load = result["load_cpu_s"] / max(1, refused + others) * 1e6
    latencies = sorted(result["latencies"].get("503", [])) or [float("nan")]
    p50, p99 = (latencies[int(len(latencies) * q)] * 1000 for q in (0.5, 0.99))
    print(f"server {user + system:.0f} µs ({user:.0f} + {system:.0f}); load {load:.0f} µs; "
          f"{refused / args.seconds:.0f} refusals/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
          f"other answers {others}, errors {len(result['errors'])}")


if __name__ == "__main__":
    main()
