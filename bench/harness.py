"""The machinery `bench/serving.py` drives: cores to pin load and servers to, wrk runs
with the server's CPU time read from /proc, the server processes (`bench/servers.py`
run as `serving.py --worker …`), raw predict timings in a process of their own, and
what a modelport server's /metrics says about its batches and versions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
FASTAPI = "fastapi"  # the baseline's label
MINIMAL = "fastapi, minimal"  # issue 19's: the peers' harness's minimal endpoint
NOOP = "no-op ASGI app"  # the HTTP limit's; every other server is a modelport one
BASELINES = (FASTAPI, MINIMAL, NOOP)


@dataclass(frozen=True)
class Cores:
    load: list[str]  # command prefix pinning wrk (and this process)
    server: list[str]  # … and every server

    @classmethod
    def pick(cls) -> Cores:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2 or shutil.which("taskset") is None:
            print("warning: fewer than 2 cores or no taskset: wrk and the servers share "
                  "cores, the numbers are less meaningful", file=sys.stderr)
            return cls([], [])
        os.sched_setaffinity(0, {cores[0]})  # our own bookkeeping stays off the server core
        return cls(["taskset", "-c", str(cores[0])], ["taskset", "-c", str(cores[1])])


# --- wrk ------------------------------------------------------------------------------

LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %%d, "duration_us": %%d, "non2xx": %%d, "connect": %%d, ' ..
    '"read": %%d, "write": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Sample:
    """One wrk run, and what the server's threads did meanwhile."""

    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    cpu_s: float = 0.0  # CPU time of the server's threads
    queued_s: float = 0.0  # time they were runnable but another process had the core

    @property
    def ok_per_s(self) -> float:
        return (self.requests - self.non2xx) / self.seconds

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / max(self.requests, 1) * 1e6


def write_script(path: Path, body: str) -> Path:
    path.write_text(LUA % body)
    return path


def wrk_command(cores: Cores, url: str, script: Path, connections: int,
                seconds: float) -> list[str]:
    return [*cores.load, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency",
            "--timeout", "10s", "-s", str(script), url]


def parse_wrk(output: str) -> Sample:
    """wrk's summary, from the line our Lua `done()` writes (non2xx: status > 399)."""
    for line in output.splitlines():
        if line.startswith("BENCH "):
            r = json.loads(line[len("BENCH "):])
            return Sample(
                requests=r["requests"], seconds=r["duration_us"] / 1e6, non2xx=r["non2xx"],
                socket_errors=r["connect"] + r["read"] + r["write"] + r["timeout"],
                p50_ms=r["p50_us"] / 1000, p99_ms=r["p99_us"] / 1000)
    raise RuntimeError(f"no summary in wrk's output:\n{output}")


def wrk(cores: Cores, server: Server, script: Path, connections: int,
        seconds: float) -> Sample:
    before = cpu_snapshot(server.proc.pid)
    done = subprocess.run(wrk_command(cores, server.url, script, connections, seconds),
                          capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = cpu_snapshot(server.proc.pid)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    sample = parse_wrk(done.stdout)
    sample.cpu_s = after[0] - before[0]
    # threads that came or went during the run (thread pools do that) are left out
    sample.queued_s = sum(w - before[1][t] for t, w in after[1].items() if t in before[1])
    return sample


def cpu_snapshot(pid: int) -> tuple[float, dict[str, float]]:
    """CPU seconds of the process (its ended threads included) and, per live thread,
    seconds it spent runnable but waiting for a core."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    waiting: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            waiting[task.name] = int((task / "schedstat").read_text().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended, or a kernel without schedstats
    return cpu, waiting


# --- servers --------------------------------------------------------------------------


@dataclass
class Server:
    label: str
    port: int
    path: str  # the prediction route
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def is_modelport(self) -> bool:
        return self.label not in BASELINES


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env() -> dict[str, str]:
    # settings come from the command line; stray MODELPORT_* variables must not leak in
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}


def worker_command(cores: Cores, worker: list[str], home: Path, ref: str) -> list[str]:
    return [*cores.server, sys.executable, str(HERE / "serving.py"), "--worker", *worker,
            "--home", str(home), "--ref", ref]


def launch(cores: Cores, label: str, worker: list[str], home: Path, ref: str,
           logs: Path) -> Server:
    port = free_port()
    log = logs / f"{label.replace(', ', '-').replace(' ', '-')}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*worker_command(cores, worker, home, ref), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=child_env())
    path = "/predict" if label in BASELINES else f"/models/{ref.split('@')[0]}/predict"
    return Server(label, port, path, proc, log)


def wait_ready(server: Server, body: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.label} exited ({server.proc.returncode}):\n"
                               f"{server.log.read_text()[-3000:]}")
        try:
            if server.is_modelport:
                http("GET", f"http://127.0.0.1:{server.port}/v2/health/ready")
            else:
                http("POST", server.url, body.encode())
            return
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.2)
    raise RuntimeError(f"{server.label} not ready after {timeout:g}s:\n"
                       f"{server.log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http(method: str, url: str, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        payload: bytes = response.read()
        return payload


class RawPredict:
    """The model in a process of its own on the server core, timing predict on demand."""

    def __init__(self, cores: Cores, home: Path, ref: str, dataset: str) -> None:
        self.proc = subprocess.Popen(
            [*worker_command(cores, ["raw"], home, ref), "--dataset", dataset],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())
        self._read()  # {"ready": true} once the model is loaded

    def time(self, size: int, seconds: float, *, proba: bool = True) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{size} {seconds}{'' if proba else ' predict'}\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        out: IO[str] | None = self.proc.stdout
        line = out.readline() if out is not None else ""
        if not line:
            raise RuntimeError(f"the raw predict process ended ({self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        stop(self.proc)


# --- /metrics -------------------------------------------------------------------------


@dataclass
class Histogram:
    """`modelport_batch_size` (rows per model call), summed over label sets."""

    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    total: float = 0.0
    count: float = 0.0

    def __sub__(self, other: Histogram) -> Histogram:
        return Histogram({le: n - other.buckets.get(le, 0) for le, n in self.buckets.items()},
                         self.total - other.total, self.count - other.count)

    def __add__(self, other: Histogram) -> Histogram:
        les = set(self.buckets) | set(other.buckets)
        return Histogram({le: self.buckets.get(le, 0) + other.buckets.get(le, 0) for le in les},
                         self.total + other.total, self.count + other.count)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def median_bound(self) -> int:
        """Upper bound of the bucket holding the median batch (buckets are 1, 2, 4, …)."""
        for le in sorted(self.buckets):
            if self.buckets[le] >= self.count / 2:
                return int(le)
        return 0

    def as_json(self) -> dict[str, Any]:
        return {"mean": round(self.mean, 2), "median_le": self.median_bound,
                "batches": self.count,
                "buckets": {str(int(le)) if le != float("inf") else "+Inf": n
                            for le, n in sorted(self.buckets.items())}}


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float, str]]]:
    from prometheus_client.parser import text_string_to_metric_families

    text = http("GET", f"http://127.0.0.1:{port}/metrics").decode()
    return {f.name: [(s.labels, s.value, s.name) for s in f.samples]
            for f in text_string_to_metric_families(text)}


def batch_histogram(port: int) -> Histogram:
    hist = Histogram()
    for labels, value, name in scrape(port).get("modelport_batch_size", []):
        if name.endswith("_bucket"):
            le = float(labels["le"])
            hist.buckets[le] = hist.buckets.get(le, 0) + value
        elif name.endswith("_sum"):
            hist.total += value
        elif name.endswith("_count"):
            hist.count += value
    return hist


def requests_by_version(port: int) -> dict[str, dict[str, float]]:
    """Answered prediction requests per served version and status."""
    out: dict[str, dict[str, float]] = {}
    for labels, value, name in scrape(port).get("modelport_requests", []):
        if name.endswith("_total"):
            by_status = out.setdefault(labels["version"], {})
            by_status[labels["status"]] = by_status.get(labels["status"], 0) + value
    return out
