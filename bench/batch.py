"""Batch benchmark: `modelport batch` against a plain PostgreSQL read and the raw model.

    .venv/bin/python bench/batch.py [--rows 1000000] [--quick] [--no-ray]  # or: make bench-batch

Loads N rows of breast-cancer-like features (an integer id and 30 floats) into a
PostgreSQL table with COPY, registers StandardScaler + LogisticRegression in a
throwaway registry, then measures, interleaved within each repetition so drift on a
shared machine hits every measurement alike:

- raw model: `predict_proba` in-process on chunks of the data;
- raw read: the whole table read into numpy, by a binary COPY and by a SELECT;
- modelport: the batch job (in-process, as `modelport batch` runs it, without the
  process start-up, which is measured once on its own), scoring every row and
  upserting predictions and probabilities into a results table it creates, fed by a
  keys query (`SELECT id FROM t`, each chunk looked up by the retriever) and by a query
  that carries the features (`SELECT * FROM t`, no lookup); a dry run of the latter
  (no writes) separates reading and scoring from writing;
- modelport on Ray (`--engine ray`, unless --no-ray): the same job (the query that
  carries the features) on a local Ray started once beforehand (its start is reported
  on its own), blocks of --ray-block-size rows, --ray-actors actors; each run starts
  its actors, which load the model, so the time includes that.

Prints medians and the target ratio, modelport rows/s / min(raw model, raw read), and
writes JSON to bench/results/batch.json. bench/README.md explains it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "batch.json"
URL = "postgresql://postgres@127.0.0.1:5432/test"
TARGET = 0.6  # issue 19: the batch job at least 60 % of a binary COPY read
FEATURES = 30
HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # binary COPY: signature, flags, extension
TRAILER = b"\xff\xff"
# one row of a binary COPY of (id bigint, 30 x double): a field count, then a length
# and a big-endian value per field
ROW = np.dtype([("n", ">i2"), ("idlen", ">i4"), ("id", ">i8"),
                *[x for i in range(FEATURES) for x in ((f"len{i}", ">i4"), (f"f{i}", ">f8"))]])


def names() -> list[str]:
    """The model's feature names ("mean radius", …), which are the table's columns."""
    from sklearn.datasets import load_breast_cancer

    return [str(c) for c in load_breast_cancer().feature_names]


def columns() -> str:
    """id and the features, quoted for SQL."""
    return ", ".join(["id", *(f'"{c}"' for c in names())])


def features(n: int, seed: int = 0) -> np.ndarray:
    """n rows sampled from load_breast_cancer, each value perturbed by ~1% (seeded)."""
    from sklearn.datasets import load_breast_cancer

    base = load_breast_cancer().data
    rng = np.random.default_rng(seed)
    rows = base[rng.integers(0, len(base), n)]
    return rows * (1 + 0.01 * rng.standard_normal(rows.shape))


def model() -> Any:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return X, make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)


# --- the table ----------------------------------------------------------------------------

def load_table(conn: psycopg.Connection[Any], table: str, n: int) -> float:
    """Create `table` (id + 30 doubles) and fill it with a binary COPY; returns seconds."""
    cols = ", ".join(f'"{c}" DOUBLE PRECISION NOT NULL' for c in names())
    started = time.perf_counter()
    conn.execute(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, {cols})")
    with conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(HEADER)
        for lo in range(0, n, 100_000):
            part = features(min(100_000, n - lo), seed=lo)
            rows = np.empty(len(part), ROW)
            rows["n"], rows["idlen"] = FEATURES + 1, 8
            rows["id"] = np.arange(lo + 1, lo + 1 + len(part))
            for i in range(FEATURES):
                rows[f"len{i}"], rows[f"f{i}"] = 8, part[:, i]
            copy.write(rows.tobytes())
        copy.write(TRAILER)
    conn.execute(f"VACUUM ANALYZE {table}")  # as a table that has been there a while
    return time.perf_counter() - started


# --- the raw baselines ---------------------------------------------------------------------

def raw_model(clf: Any, n: int, chunk: int) -> int:
    """predict_proba over n rows in chunks of `chunk` (a 100k-row sample, cycled)."""
    X = features(min(n, 100_000), seed=1)
    done = 0
    with warnings.catch_warnings():  # fitted on a DataFrame, called with arrays
        warnings.simplefilter("ignore", UserWarning)
        while done < n:
            lo = done % len(X)
            part = X[lo:lo + min(chunk, n - done)]
            clf.predict_proba(part)
            done += len(part)
    return done


def copy_read(conn: psycopg.Connection[Any], table: str, chunk: int) -> int:
    """Binary COPY of the table, each `chunk` rows parsed into an id and a float matrix."""
    done = 0
    with conn.cursor() as cur, cur.copy(
            f"COPY (SELECT {columns()} FROM {table}) TO STDOUT (FORMAT BINARY)") as copy:
        for ids, X in _parsed(copy, chunk):
            done += len(ids)
            assert X.shape == (len(ids), FEATURES)
    return done


def _parsed(copy: Any, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    # each row copied out of its message at once (holding the messages costs more)
    data, rows, first = bytearray(), 0, True
    for message in copy:  # the protocol sends one message per row
        if first:
            message, first = message[len(HEADER):], False
        if len(message) <= len(TRAILER):  # the trailer (or the header alone)
            continue
        data += message
        rows += 1
        if rows == chunk:
            yield _rows(data)
            data, rows = bytearray(), 0
    if rows:
        yield _rows(data)


def _rows(data: bytearray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.frombuffer(data, ROW)
    assert (rows["n"] == FEATURES + 1).all(), "a NULL, or not (id, 30 doubles)"
    X = np.column_stack([rows[f"f{i}"] for i in range(FEATURES)]).astype(np.float64)
    return rows["id"].astype(np.int64), X


def select_read(conn: psycopg.Connection[Any], table: str, chunk: int) -> int:
    """A plain SELECT through a server-side cursor (binary results), fetchmany → numpy."""
    done = 0
    with conn.transaction(), conn.cursor(name="bench_select", binary=True) as cur:
        cur.itersize = chunk
        cur.execute(f"SELECT {columns()} FROM {table}")
        while rows := cur.fetchmany(chunk):
            arr = np.array(rows, dtype=np.float64)
            done += len(arr)
    return done


# --- modelport -------------------------------------------------------------------------------

def write_config(path: Path, url: str, table: str, chunk: int) -> Path:
    path.write_text(f"""\
pipelines:
  - name: score
    model: cancer@production
    retriever: {{type: sql, url: "{url}", table: {table}}}
    writer: {{type: sql, url: "{url}", table: {table}_results, create: true}}
    chunk_size: {chunk}
""")
    return path


class Progress:
    """Told what the command's progress bar is told: with one, the job counts the
    rows for the bar's total, as `modelport batch` does."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.done = 0

    def start(self, total: int | None, done: int, since: float) -> None:
        self.total, self.done = total, done

    def advance(self, rows: int) -> None:
        self.done += rows


class Modelport:
    """The batch job in-process, on a fresh service (as `modelport batch` builds one)."""

    def __init__(self, home: Path, config: Path, url: str, table: str) -> None:
        self.home, self.config, self.url, self.table = home, config, url, table

    def run(self, query: str, *, dry_run: bool = False) -> tuple[float, Timing]:
        """Start-up seconds, and the job's timing, for one run of the job."""
        return asyncio.run(self._run(query, dry_run))

    async def _run(self, query: str, dry_run: bool) -> tuple[float, Timing]:
        from modelport import Registry, Settings
        from modelport.config import load_config
        from modelport.jobs import BatchJob, BatchOptions, source_for
        from modelport.service import Service

        settings = Settings(home=self.home)
        with Registry(settings=settings) as reg:
            started = time.perf_counter()
            service = Service(settings, load_config(self.config, {}), reg)
            await service.start(follow=False)
            startup = time.perf_counter() - started
            try:
                source = source_for(service, "score", keys=query)
                job = BatchJob(service, "score", source, BatchOptions(
                    chunk_size=service.config.pipelines[0].chunk_size, dry_run=dry_run,
                    job_id=f"{self.table}-{uuid.uuid4().hex[:8]}"), reporter=Progress())
                timing = await timed_async(job.run)
            finally:
                await service.stop()
        result = timing.result
        if result.rejected:
            raise SystemExit(f"{result.rejected} rows rejected: {result.reasons}")
        timing.rows = result.read if dry_run else result.written
        return startup, timing

    def run_on_ray(self, query: str, actors: int, block_size: int) -> Timing:
        """The same job on Ray Data (the cluster already started), as `--engine ray`
        runs it: the driver's service loads the model once to check it and pin its
        version, then the job plans, reads, scores and commits its blocks."""
        return asyncio.run(self._run_on_ray(query, actors, block_size))

    async def _run_on_ray(self, query: str, actors: int, block_size: int) -> Timing:
        from modelport import Registry, Settings
        from modelport.config import RayConfig, load_config
        from modelport.jobs import BatchOptions, source_for
        from modelport.jobs.ray import RayBatchJob, pinned_versions
        from modelport.service import Service

        settings = Settings(home=self.home)
        with Registry(settings=settings) as reg:
            service = Service(settings, load_config(self.config, {}), reg)
            await service.start(follow=False)
            try:
                pinned = pinned_versions(service)
            finally:
                await service.stop()
            source = source_for(service, "score", keys=query)
            job = RayBatchJob(service, "score", source, BatchOptions(
                chunk_size=service.config.pipelines[0].chunk_size,
                job_id=f"{self.table}-{uuid.uuid4().hex[:8]}"),
                RayConfig(actors=actors, block_size=block_size, cpus_per_actor=0.5),
                pinned=pinned)
            timing = await timed_async(lambda: asyncio.to_thread(job.run))
        result = timing.result
        if result.rejected:
            raise SystemExit(f"{result.rejected} rows rejected: {result.reasons}")
        timing.rows = result.written
        return timing

    def process_startup(self) -> float:
        """`modelport batch` as a command on 1,000 rows, less the job's own time: the
        cost of starting Python, importing, loading the model and connecting."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
        env.update(MODELPORT_HOME=str(self.home), COLUMNS="200")
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "modelport", "batch", "score", "--config", str(self.config),
             "--keys", f"SELECT id FROM {self.table} WHERE id <= 1000", "--fresh",
             "--job-id", f"{self.table}-startup"],
            env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        found = re.search(r"time\s+([\d.]+) s", proc.stdout)
        if proc.returncode or found is None:
            raise SystemExit(f"modelport batch failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return wall - float(found.group(1))


# --- running and reporting --------------------------------------------------------------------

MODEL, COPY, SELECT = "raw model (predict_proba)", "raw read: COPY binary", "raw read: SELECT"
KEYS, ROWS, DRY = ("modelport, --keys 'SELECT id' (lookup)",
                   "modelport, --keys 'SELECT *' (no lookup)",
                   "modelport, --keys 'SELECT *', dry run")
RAY = "modelport --engine ray, --keys 'SELECT *'"


def start_ray(address: str | None) -> float:
    """Join the Ray at `address`, or start a local one as `--engine ray` does (on
    loopback); seconds."""
    from modelport.jobs.ray import connect

    started = time.perf_counter()
    connect(address)
    return time.perf_counter() - started


def bench(n: int, reps: int, chunk: int, url: str, ray: tuple[int, int] | None = None,
          ray_address: str | None = None) -> dict[str, Any]:
    table = f"bench_batch_{uuid.uuid4().hex[:8]}"
    conn = psycopg.connect(url, autocommit=True)
    X, clf = model()
    runs: dict[str, list[Timing]] = {}
    startups: list[float] = []
    try:
        print(f"loading {n:,} rows into {table} ...", file=sys.stderr)
        load_seconds = load_table(conn, table, n)
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            register(home, X, clf)
            mp = Modelport(home, write_config(home / "modelport.yaml", url, table, chunk),
                           url, table)
            measures: list[tuple[str, Callable[[], Timing]]] = [
                (MODEL, lambda: timed(lambda: raw_model(clf, n, chunk))),
                (COPY, lambda: timed(lambda: copy_read(conn, table, chunk))),
                (SELECT, lambda: timed(lambda: select_read(conn, table, chunk))),
                (KEYS, lambda: job(mp, conn, table, f"SELECT id FROM {table}", startups)),
                (ROWS, lambda: job(mp, conn, table, f"SELECT * FROM {table}", startups)),
                (DRY, lambda: job(mp, conn, table, f"SELECT * FROM {table}", startups,
                                  dry_run=True)),
            ]
            ray_start = None
            if ray is not None:
                actors, block_size = ray
                print("starting a local Ray ...", file=sys.stderr)
                ray_start = start_ray(ray_address)
                measures.append((RAY, lambda: ray_job(mp, conn, table, actors, block_size)))
            job(mp, conn, table, f"SELECT id FROM {table} WHERE id <= 20000", [])  # warm-up
            for rep in range(reps):
                for label, measure in measures:
                    timing = measure()
                    if timing.rows != n:
                        raise SystemExit(f"{label}: {timing.rows} rows, expected {n}")
                    runs.setdefault(label, []).append(timing)
                    print(f"  [{rep + 1}/{reps}] {label:45} {timing.seconds:7.2f} s "
                          f"{n / timing.seconds:10,.0f} rows/s  CPU {timing.cpu:5.2f} s",
                          file=sys.stderr)
            process = statistics.median(mp.process_startup() for _ in range(min(reps, 3)))
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_results, {table}_results_rejects")
        # the jobs' checkpoints (their ids start with the table's name)
        if conn.execute("SELECT to_regclass('mp_batch_checkpoints')").fetchone() != (None,):
            conn.execute("DELETE FROM mp_batch_checkpoints WHERE job_id LIKE %s", [f"{table}-%"])
        conn.close()
    result = summarize(n, chunk, runs, load_seconds, statistics.median(startups), process)
    if ray is not None:
        result["ray"] = {"actors": ray[0], "block_size": ray[1], "start_s": ray_start,
                         "rows_per_s_vs_local": statistics.median(
                             runs[ROWS][i].seconds / runs[RAY][i].seconds
                             for i in range(reps))}
    return result


def register(home: Path, X: Any, clf: Any) -> None:
    from modelport import Registry, Settings

    with Registry(settings=Settings(home=home)) as reg:
        mv = reg.register("cancer", clf, sample_input=X[:5])
        reg.set_alias("cancer", "production", mv.version)


@dataclass
class Timing:
    seconds: float
    cpu: float  # CPU time of this process (all its threads), PostgreSQL's not included
    rows: int = 0
    result: Any = None


def timed(fn: Callable[[], int]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    rows = fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu, rows)


async def timed_async(fn: Callable[[], Awaitable[Any]]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    result = await fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu, result=result)


def job(mp: Modelport, conn: psycopg.Connection[Any], table: str, query: str,
        startups: list[float], *, dry_run: bool = False) -> Timing:
    # every run writes into an empty results table, which the writer creates
    conn.execute(f"DROP TABLE IF EXISTS {table}_results")
    startup, timing = mp.run(query, dry_run=dry_run)
    startups.append(startup)
    return timing


def ray_job(mp: Modelport, conn: psycopg.Connection[Any], table: str, actors: int,
            block_size: int) -> Timing:
    conn.execute(f"DROP TABLE IF EXISTS {table}_results")
    return mp.run_on_ray(f"SELECT * FROM {table}", actors, block_size)


def summarize(n: int, chunk: int, timings: dict[str, list[Timing]], load: float,
              startup: float, process: float) -> dict[str, Any]:
    runs = {k: [t.seconds for t in v] for k, v in timings.items()}
    rates = {k: [n / s for s in v] for k, v in runs.items()}
    median = {k: statistics.median(v) for k, v in rates.items()}
    reps = len(runs[MODEL])
    # the ratio within each repetition (same machine weather), then its median; the raw
    # read is the faster of the two plain reads: the stricter target
    floor = [min(rates[MODEL][i], max(rates[COPY][i], rates[SELECT][i])) for i in range(reps)]
    ratios = {k: statistics.median(rates[k][i] / floor[i] for i in range(reps))
              for k in (KEYS, ROWS, DRY)}
    return {
        "rows": n, "chunk_size": chunk, "reps": reps, "load_seconds": load,
        "seconds": {k: statistics.median(v) for k, v in runs.items()},
        "rows_per_s": median, "runs_seconds": runs,
        "cpu_seconds": {k: statistics.median(t.cpu for t in v) for k, v in timings.items()},
        "ratio_vs_min_raw": ratios,
        "ratio_vs_copy": {k: statistics.median(rates[k][i] / rates[COPY][i]
                                               for i in range(reps)) for k in (KEYS, ROWS)},
        "ratio_vs_select": {k: statistics.median(rates[k][i] / rates[SELECT][i]
                                                 for i in range(reps)) for k in (KEYS, ROWS)},
        "startup_in_process_s": startup, "startup_process_s": process, "target": TARGET,
    }


def report(result: dict[str, Any]) -> str:
    n = result["rows"]
    lines = [f"{n:,} rows, chunks of {result['chunk_size']:,}, median of {result['reps']} "
             f"(loading the table by COPY: {result['load_seconds']:.1f} s)", "",
             f"| {'measurement':45} | {'rows':>9} | {'seconds':>7} | {'rows/s':>9} | "
             f"{'ratio':>5} | {'CPU s':>5} |",
             f"|{'-' * 47}|{'-' * 10}:|{'-' * 8}:|{'-' * 10}:|{'-' * 6}:|{'-' * 6}:|"]
    for label, seconds in result["seconds"].items():
        ratio = result["ratio_vs_min_raw"].get(label)
        cell = f"{ratio:.0%}" if ratio is not None else ""
        lines.append(f"| {label:45} | {n:>9,} | {seconds:7.2f} | "
                     f"{result['rows_per_s'][label]:>9,.0f} | {cell:>5} | "
                     f"{result['cpu_seconds'][label]:5.2f} |")
    lines += ["", "ratio = modelport rows/s / min(raw model, raw read), raw read = the faster "
              "of COPY and SELECT, within each repetition; "
              f"target >= {TARGET:.0%}"]
    for label in (KEYS, ROWS):
        ratio = result["ratio_vs_min_raw"][label]
        lines.append(f"  {label}: {ratio:.0%} {'ok' if ratio >= TARGET else 'MISSED'} "
                     f"(vs the COPY read: {result['ratio_vs_copy'][label]:.0%}, vs the "
                     f"SELECT read: {result['ratio_vs_select'][label]:.0%})")
    lines.append("CPU s: this process's CPU time (all threads; PostgreSQL's is not in it; "
                 "on Ray, the driver's alone)")
    if "ray" in result:
        ray = result["ray"]
        lines.append(f"on Ray: {ray['actors']} actors, blocks of {ray['block_size']:,} rows; "
                     f"{ray['rows_per_s_vs_local']:.2f}x the local engine's rows/s on the same "
                     f"query; the local Ray's start, not in the times: {ray['start_s']:.1f} s")
    lines.append(f"start-up, not in the times above: {result['startup_in_process_s']:.2f} s "
                 f"in-process (model load, connections); {result['startup_process_s']:.1f} s "
                 "for the `modelport batch` command (Python, imports, the same)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows in the table (default 1,000,000; "
                                                 "200,000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer rows, one repetition")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--url", default=URL, help=f"PostgreSQL (default {URL})")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray row")
    parser.add_argument("--ray-actors", type=int, default=2)
    parser.add_argument("--ray-block-size", type=int, default=50_000)
    parser.add_argument("--ray-address", help="a running Ray (default: start a local one)")
    args = parser.parse_args()
    n = args.rows or (200_000 if args.quick else 1_000_000)
    reps = args.reps or (1 if args.quick else 3)
    started = time.monotonic()
    ray = None if args.no_ray else (args.ray_actors, args.ray_block_size)
    result = bench(n, reps, args.chunk_size, args.url, ray, args.ray_address)
    print(report(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "batch", "quick": args.quick,
        "wall_seconds": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(),
                    "python": platform.python_version(), "platform": platform.platform()},
        **result}, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
