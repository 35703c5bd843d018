"""Crash test: two `modelport stream` processes, one SIGKILLed mid-batch again and again,
against the real brokers and PostgreSQL. Nothing may be lost and nothing duplicated:
every good message ends as exactly one row, every poison message as a dead letter with
its reason, and the stream ends fully acknowledged.

20,000 messages, 100 of them poison (bad JSON, wrong types, missing fields, no data).
Each kill waits until the victim holds messages it has not acknowledged (it is
mid-batch), and until both workers consume, so one is always at work: a restart costs
seconds of Python start-up (scikit-learn). The messages are published in parts, the
next one just before each kill: however long a restart or a Kafka rebalance takes on a
loaded machine, the survivor cannot finish the stream before the last kill (it did on
Kafka, and the test then waited for a victim holding messages that no longer existed).
The pipeline's pre step takes 0.1 s per batch of 100 (a heavier model, in effect), so
a batch is in flight long enough to be killed in. The brokers hand a killed worker's
messages back after 1.5-2 s (claim idle, ack wait), Kafka once the group has
rebalanced without it (its session timeout, then a join).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from stream_helpers import cancer, nats_cleanup, nats_url, patients, redis_cleanup, redis_url

from conftest import PG_HOST, PG_PORT, require_service
from modelport import Registry, Settings

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]

MESSAGES = 20_000
KILLS = 5
BATCH = 100
STEP_S = 0.1  # the pre step's time per batch: ~1,000 messages/s per worker
HERE = Path(__file__).resolve().parent
POISON_EVERY = 200  # 100 poison messages among the 20,000


def make_messages() -> tuple[list[bytes], dict[str, dict[str, float]], dict[bytes, str]]:
    """Payloads in publishing order; the good ones' records by id; poison → its kind."""
    records = patients(MESSAGES)
    payloads: list[bytes] = []
    good: dict[str, dict[str, float]] = {}
    poison: dict[bytes, str] = {}
    for i, record in enumerate(records):
        ident = f"m{i}"
        if i % POISON_EVERY == 7:
            kind = ("bad json", "wrong type", "missing field", "no data")[(i // POISON_EVERY) % 4]
            if kind == "bad json":
                body = b'{"id": "%s", "data": {"mean radius": ' % ident.encode()
            elif kind == "wrong type":
                body = orjson.dumps({"id": ident, "data": {**record, "mean area": "big"}})
            elif kind == "missing field":
                body = orjson.dumps({"id": ident, "data": {
                    k: v for k, v in record.items() if k != "mean texture"}})
            else:
                body = orjson.dumps({"id": ident, "data": None})
            poison[body] = kind
            payloads.append(body)
        else:
            good[ident] = record
            payloads.append(orjson.dumps({"id": ident, "data": record}))
    return payloads, good, poison


REASONS = {"bad json": "not valid json", "wrong type": "expected FP64, got string",
           "missing field": "'mean texture'", "no data": "expected a record or a row"}


@dataclass
class Broker:
    """What the test needs of one broker: its yaml, publishing, reading dead letters."""

    name: str
    yaml: str
    publish: Callable[[list[bytes]], Awaitable[None]]
    dead_letters: Callable[[], Awaitable[list[dict[str, Any]]]]
    unacked: Callable[[], Awaitable[int]]
    held_by: Callable[[int], Awaitable[int | None]]
    """Messages a worker process holds unacknowledged (None: the broker cannot tell
    per worker, and tells how many all workers hold)."""
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    kills: int = KILLS


@pytest.fixture(params=["redis", "nats", "kafka"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    name = f"mpcrash{os.urandom(5).hex()}"
    if request.param == "redis":
        url = redis_url()
        async with redis_cleanup(url) as keys:
            keys += [name, f"{name}.dlq"]
            b = await _redis(url, name)
            yield b
            for close in b.closers:
                await close()
    elif request.param == "kafka":
        b = await _kafka(request.getfixturevalue("kafka"), name)
        yield b
        for close in b.closers:
            await close()
    else:
        url = nats_url()
        async with nats_cleanup(url) as streams:
            streams += [name, f"{name}_dlq"]
            b = await _nats(url, name)
            yield b
            for close in b.closers:
                await close()


async def _redis(url: str, name: str) -> Broker:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)

    async def publish(payloads: list[bytes]) -> None:
        for start in range(0, len(payloads), 1000):
            async with client.pipeline(transaction=False) as pipe:
                for p in payloads[start:start + 1000]:
                    pipe.xadd(name, {"payload": p})
                await pipe.execute()

    async def dead_letters() -> list[dict[str, Any]]:
        return [orjson.loads(f[b"payload"]) for _, f in await client.xrange(f"{name}.dlq")]

    async def unacked() -> int:
        groups = await client.xinfo_groups(name)
        return sum(int(g["lag"] or 0) + int(g["pending"]) for g in groups) if groups else -1

    async def held_by(pid: int) -> int | None:
        consumer = f"{socket.gethostname()}-{pid}"
        for c in await client.xinfo_consumers(name, "scorers"):
            if c["name"].decode() == consumer:
                return int(c["pending"])
        return 0

    yaml = (f"broker: {{type: redis, url: '{url}', stream: {name}, group: scorers, "
            f"claim_idle_ms: 1500}}\n      dead_letter: {name}.dlq")
    return Broker("redis", yaml, publish, dead_letters, unacked, held_by, [client.aclose])


async def _nats(url: str, name: str) -> Broker:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{name}.in"])

    async def publish(payloads: list[bytes]) -> None:
        for start in range(0, len(payloads), 1000):
            futures = [await js.publish_async(f"{name}.in", p)
                       for p in payloads[start:start + 1000]]
            await asyncio.gather(*futures)

    async def dead_letters() -> list[dict[str, Any]]:
        try:
            info = await js.stream_info(f"{name}_dlq")
        except nats.js.errors.NotFoundError:
            return []
        first, last = info.state.first_seq, info.state.last_seq
        return [orjson.loads((await js.get_msg(f"{name}_dlq", seq)).data)
                for seq in range(first, last + 1)] if info.state.messages else []

    async def unacked() -> int:
        try:
            info = await js.consumer_info(name, "scorers")
        except nats.js.errors.NotFoundError:
            return -1
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def held_by(pid: int) -> int | None:
        # JetStream does not say which client holds a message: all of them, then
        info = await js.consumer_info(name, "scorers")
        return -int(info.num_ack_pending or 0)

    yaml = (f"broker: {{type: nats, url: '{url}', stream: {name}, subject: {name}.in, "
            f"durable: scorers, ack_wait: 2}}\n      dead_letter: {name}.dlq")
    return Broker("nats", yaml, publish, dead_letters, unacked, held_by, [nc.close])


async def _kafka(bootstrap: str, name: str) -> Broker:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(name, 3, 1), NewTopic(f"{name}.dlq", 1, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    partitions = [TopicPartition(name, p) for p in range(3)]
    published = [0]

    async def publish(payloads: list[bytes]) -> None:
        first = published[0]
        futures = [await producer.send(name, p, key=b"%d" % (first + i))
                   for i, p in enumerate(payloads)]
        await asyncio.gather(*futures)
        published[0] += len(payloads)

    async def dead_letters() -> list[dict[str, Any]]:
        # from the beginning until nothing more comes: tansu's "latest" offset reads low
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            dlq = TopicPartition(f"{name}.dlq", 0)
            consumer.assign([dlq])
            await consumer.seek_to_beginning(dlq)
            letters: list[dict[str, Any]] = []
            while batch := await consumer.getmany(timeout_ms=1000):
                letters += [orjson.loads(r.value) for rs in batch.values() for r in rs]
            return letters
        finally:
            await consumer.stop()

    async def unacked() -> int:
        # the group's committed offsets against what was published so far
        offsets = await admin.list_consumer_group_offsets("scorers", partitions=partitions)
        return published[0] - sum(max(m.offset, 0) for m in offsets.values())

    async def held_by(pid: int) -> int | None:
        # Kafka does not say which member holds what: the group's uncommitted, then
        return -await unacked()

    async def drop() -> None:
        await producer.stop()
        with contextlib.suppress(Exception):
            await admin.delete_topics([name, f"{name}.dlq"])
        await admin.close()

    yaml = (f"broker: {{type: kafka, bootstrap_servers: '{bootstrap}', topic: {name}, "
            f"group_id: scorers, session_timeout_ms: 6000, heartbeat_interval_ms: 1000}}\n"
            f"      dead_letter: {name}.dlq")
    return Broker("kafka", yaml, publish, dead_letters, unacked, held_by, [drop], kills=3)


class Workers:
    """`modelport stream` processes, their logs in files."""

    def __init__(self, tmp: Path, home: Path, config: Path) -> None:
        self.tmp, self.home, self.config = tmp, home, config
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.live: list[int] = []  # indexes of the processes meant to be running

    def start(self) -> int:
        log = self.tmp / f"worker-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "modelport", "--home", str(self.home), "stream",
                 "score", "--config", str(self.config), "--drain-timeout", "20"],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                env={**os.environ, "MP_TEST_STEP_S": str(STEP_S), "PYTHONPATH": os.pathsep.join(
                    [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])})
        self.procs.append(proc)
        return len(self.procs) - 1

    def replace(self, old: int) -> None:
        self.live[self.live.index(old)] = self.start()

    def exited(self) -> list[int | None]:
        return [self.procs[i].returncode for i in self.live if self.procs[i].poll() is not None]

    def consuming(self, i: int) -> bool:
        return self.procs[i].poll() is None and b"consuming" in self.logs[i].read_bytes()

    def tails(self) -> str:
        return "\n".join(f"--- {log.name}\n" + log.read_text()[-1500:] for log in self.logs)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def setup_service(tmp: Path, pg_url: str, broker: Broker) -> tuple[Path, Path]:
    home = tmp / "home"
    X, clf = cancer()
    reg = Registry(settings=Settings(home=home))
    reg.register("cancer", clf, sample_input=X[:5])  # type: ignore[index]
    reg.close()
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE scores (id TEXT PRIMARY KEY, predictions BIGINT, "
                          "probabilities TEXT)"))
    engine.dispose()
    config = tmp / "modelport.yaml"
    config.write_text(f"""
models: [{{ref: "cancer:1"}}]
pipelines:
  - name: score
    model: "cancer:1"
    pre: "stream_steps:slow"
    writer: {{type: sql, url: "{pg_url}", table: scores}}
    stream:
      {broker.yaml}
      batch_size: {BATCH}
      max_deliveries: 20
""")
    return home, config


def row_count(pg_url: str) -> int:
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        n = int(conn.execute(text("SELECT count(*) FROM scores")).scalar_one())
    engine.dispose()
    return n


async def test_killed_workers_lose_nothing_and_duplicate_nothing(
        tmp_path: Path, pg_url: str, broker: Broker) -> None:
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    started = time.monotonic()
    payloads, good, poison = make_messages()
    home, config = setup_service(tmp_path, pg_url, broker)
    size = -(-len(payloads) // (broker.kills + 1))
    parts = [payloads[i:i + size] for i in range(0, len(payloads), size)]
    await broker.publish(parts[0])
    workers = Workers(tmp_path, home, config)
    workers.live = [workers.start(), workers.start()]
    kills: list[int | None] = []
    try:
        # the two workers in turn, each time both consume (one is always at work) and
        # the victim holds messages it has not acknowledged: mid-batch
        for k in range(broker.kills):
            await wait_for(lambda n=(k + 1) * 1000: row_count(pg_url) >= n, 120, workers)
            await wait_for(lambda: all(map(workers.consuming, workers.live)), 120, workers)
            # the stream does not run dry before a kill: the next part, being processed
            rows = await asyncio.to_thread(row_count, pg_url)
            await broker.publish(parts[k + 1])
            await wait_for(lambda n=rows: row_count(pg_url) > n, 120, workers)
            victim = workers.live[k % 2]
            pid = workers.procs[victim].pid
            await async_wait_for(lambda p=pid: _holds(broker, p), 60, workers)
            await asyncio.sleep(random.uniform(0, STEP_S))  # anywhere in the batch
            workers.procs[victim].send_signal(signal.SIGKILL)
            workers.procs[victim].wait()
            kills.append(await broker.held_by(pid))
            workers.replace(victim)
        await wait_for(lambda: row_count(pg_url) >= len(good), 120, workers)
        await async_wait_for(lambda: _settled(broker, len(poison)), 60, workers)
        # a worker restarted last may still be importing: SIGTERM would end it before it
        # handles signals (harmless, nothing in flight, but not the clean exit checked)
        await wait_for(lambda: all(map(workers.consuming, workers.live)), 120, workers)
        for i in workers.live:
            workers.procs[i].send_signal(signal.SIGTERM)
        codes = [workers.procs[i].wait(timeout=30) for i in workers.live]
    finally:
        workers.kill_all()
    assert codes == [0, 0], workers.tails()
    if broker.name == "redis":  # the killed workers still held messages: mid-batch
        assert all(kills), kills

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, predictions FROM scores")).all()
    engine.dispose()
    assert len(rows) == len(good) and {r.id for r in rows} == set(good)  # exactly one each
    X, clf = cancer()
    ids = sorted(good)
    features = pd.DataFrame.from_records([good[i] for i in ids])[X.columns]  # type: ignore[attr-defined]
    expected = clf.predict(features)  # type: ignore[attr-defined]
    got = dict(rows)
    assert [got[i] for i in ids] == expected.tolist()  # and the right results

    dead = await broker.dead_letters()
    by_payload = {d["payload"].encode(): d["reason"] for d in dead}
    assert set(by_payload) == set(poison)  # every poison message, and nothing else
    for payload, kind in poison.items():
        assert REASONS[kind] in by_payload[payload], (kind, by_payload[payload])
    assert await broker.unacked() == 0
    print(f"\n{broker.name}: {MESSAGES:,} messages, {len(kills)} kills "
          f"(held unacked: {kills}), {len(dead)} dead letters, "
          f"{time.monotonic() - started:.0f}s")


async def _holds(broker: Broker, pid: int) -> bool:
    return bool(await broker.held_by(pid))


def _die_with_parent() -> None:
    """Workers die with the test process, even when it is killed (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def _settled(broker: Broker, poison: int) -> bool:
    return len(await broker.dead_letters()) >= poison and await broker.unacked() == 0


async def wait_for(check: Callable[[], bool], timeout: float, workers: Workers) -> None:
    async def check_async() -> bool:
        return await asyncio.to_thread(check)

    await async_wait_for(check_async, timeout, workers)


async def async_wait_for(check: Callable[[], Awaitable[bool]], timeout: float,
                         workers: Workers) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        dead = workers.exited()
        assert time.monotonic() < deadline and not dead, \
            f"no progress within {timeout}s (exited: {dead})\n{workers.tails()}"
        await asyncio.sleep(0.2)
