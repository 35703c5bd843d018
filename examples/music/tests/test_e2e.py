"""The full setup end to end: real PostgreSQL, Redis and NATS, one process per service.

One system (its own database, Redis keys and streams, named by a unique prefix) is
set up with `music.bootstrap`, and `music serve recommender|events|worker` run as
separate processes, as on Kubernetes. The tests then, in order:

1. post listens and see the next recommendations change within a second;
2. SIGKILL the realtime worker while listens keep coming, restart it, and find every
   listen in the histories, once;
3. train a worse model and see the gate not promote it (production does not move);
4. force that model into production and roll it back, under steady traffic: the
   recommender follows both moves and no request fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from modelport import Registry
from sqlalchemy import create_engine, text

from conftest import FAST, SMALL, quiet
from music import bootstrap
from music.als import AlsParams
from music.store import Store
from music.system import ALIAS, MODEL, System
from waiting import wait_for

pytestmark = pytest.mark.timeout(300)

WORSE = AlsParams(factors=2, regularization=500.0, alpha=1.0, iterations=1)
START_TIMEOUT_S = 120


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    system: System
    logs: Path
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, role: str) -> str:
        return f"http://127.0.0.1:{self.ports[role]}"

    def start(self, role: str) -> None:
        s = self.system
        assert s.db_url is not None and s.redis_url is not None and s.broker_url is not None
        self.ports.setdefault(role, free_port())
        command = [sys.executable, "-m", "music", "serve", role, "--port", str(self.ports[role]),
                   "--home", str(s.home), "--database", s.db_url, "--registry", s.db_url,
                   "--redis", s.redis_url, "--broker", s.broker_url, "--prefix", s.prefix,
                   "--no-json-logs"]
        # the registry follows alias moves every half second here (default: 2 s)
        env = {**os.environ, "MODELPORT_SERVER__POLL_INTERVAL_S": "0.5"}
        with (self.logs / f"{role}.log").open("ab") as log:  # the child keeps its own copy
            self.procs[role] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                env=env)

    def wait_ready(self, role: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            proc = self.procs[role]
            if proc.poll() is not None:
                raise AssertionError(f"{role} exited ({proc.returncode}): "
                                     + (self.logs / f"{role}.log").read_text()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url(role)}/v2/health/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise AssertionError(f"{role} not ready after {START_TIMEOUT_S}s")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def stack(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    name = f"mp_music_{uuid.uuid4().hex[:10]}"
    admin = create_engine(services["database"], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    database = services["database"].rsplit("/", 1)[0] + f"/{name}"
    home = tmp_path_factory.mktemp("e2e")
    system = System.full(database, services["redis"], services["broker"], home=home / ".modelport",
                         registry_url=database, prefix=f"{name}_")
    running = Stack(system, home)
    try:
        data = bootstrap.ensure_data(system, SMALL, say=quiet)
        bootstrap.ensure_tables(system, data, say=quiet)
        bootstrap.ensure_model(system, data, params=FAST, say=quiet)
        asyncio.run(bootstrap.ensure_topk(system, say=quiet))
        for role in ("recommender", "events", "worker"):
            running.start(role)
        for role in ("recommender", "events", "worker"):
            running.wait_ready(role)
        yield running
    finally:
        running.stop()
        _clean_up(system, services, name, admin)


def _clean_up(system: System, services: dict[str, str], name: str, admin: object) -> None:
    client = redis.Redis.from_url(services["redis"])
    for key in client.scan_iter(match=f"{system.prefix}*"):
        client.delete(key)
    client.close()

    async def drop_streams() -> None:
        import nats

        nc = await nats.connect(services["broker"])
        js = nc.jetstream()
        for stream in (system.stream, system.dead_letters):
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
        await nc.close()

    asyncio.run(drop_streams())
    with admin.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = :n"), {"n": name})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()  # type: ignore[attr-defined]


def users(stack: Stack, n: int) -> list[str]:
    store = Store(stack.system)
    try:
        return [u["user_id"] for u in store.users("", n)]
    finally:
        store.close()


def history_ids(stack: Stack, user: str) -> list[str]:
    client = redis.Redis.from_url(stack.system.redis_url or "")
    try:
        raw = client.get(f"{stack.system.prefix}history:{user}")
    finally:
        client.close()
    return [e[0] for e in orjson.loads(raw)["history"]] if raw else []


def test_1_a_listen_changes_the_next_recommendations_within_a_second(stack: Stack) -> None:
    rec, events = stack.url("recommender"), stack.url("events")
    for user in users(stack, 3):
        before = httpx.get(f"{rec}/users/{user}/recommendations?k=10").json()
        assert before["source"] == "model" and before["model"]["version"] == 1
        track = before["items"][0]["track"]
        posted = time.monotonic()
        listen = httpx.post(f"{events}/listens", json={"user": user, "track": track})
        assert listen.status_code == 201, listen.text
        while True:
            shown = httpx.get(f"{rec}/users/{user}/history?n=1").json()["listens"]
            if shown and shown[0]["id"] == listen.json()["id"]:
                break
            assert time.monotonic() - posted < 1.0, "the listen took over a second to fold in"
            time.sleep(0.02)
        after = httpx.get(f"{rec}/users/{user}/recommendations?k=10").json()
        assert time.monotonic() - posted < 1.0
        assert track not in [i["track"] for i in after["items"]]
        assert after["items"] != before["items"]


def test_2_killing_the_worker_loses_no_listen(stack: Stack) -> None:
    events = stack.url("events")
    catalog = [f"t{i:03d}" for i in range(SMALL.tracks)]
    people = users(stack, 8)
    posted: dict[str, list[str]] = {u: [] for u in people}
    stop = threading.Event()

    def post_listens() -> None:
        i = 0
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                user = people[i % len(people)]
                response = client.post(f"{events}/listens",
                                       json={"user": user, "track": catalog[i % len(catalog)]})
                assert response.status_code == 201, response.text
                posted[user].append(response.json()["id"])
                i += 1
                time.sleep(0.01)

    def posted_more(n: int) -> None:  # the producer posts `n` more listens
        before = sum(len(ids) for ids in posted.values())
        wait_for(lambda: sum(len(ids) for ids in posted.values()) >= before + n, 60,
                 f"{n} more listens posted")

    producer = threading.Thread(target=post_listens)
    producer.start()
    try:
        wait_for(lambda: any(set(posted[u][:]) & set(history_ids(stack, u)) for u in people),
                 60, "a posted listen folded")
        posted_more(20)  # the worker is busy with them
        stack.procs["worker"].send_signal(signal.SIGKILL)  # mid-batch, no goodbye
        stack.procs["worker"].wait()
        posted_more(30)  # listens keep coming while no worker runs
        stack.start("worker")
        stack.wait_ready("worker")
        posted_more(30)
    finally:
        stop.set()
        producer.join()
    total = sum(len(ids) for ids in posted.values())
    assert total > 50
    # fetched-but-unacknowledged listens come back after the consumer's ack wait (5 s)
    deadline = time.monotonic() + 30
    while True:
        missing = {u: set(ids) - set(history_ids(stack, u)) for u, ids in posted.items()}
        if not any(missing.values()):
            break
        assert time.monotonic() < deadline, f"listens lost: {missing}"
        time.sleep(0.5)
    for user in people:
        ids = history_ids(stack, user)
        assert len(ids) == len(set(ids)), "a listen was folded twice"


def test_3_the_gate_does_not_promote_a_worse_model(stack: Stack) -> None:
    data = bootstrap.ensure_data(stack.system, SMALL, say=quiet)
    with Registry(settings=stack.system.settings()) as registry:
        decision = bootstrap.train_and_gate(registry, data, params=WORSE, say=quiet)
        assert not decision.promoted, decision.reason
        assert registry.get_alias(MODEL, ALIAS) == 1
        refused = registry.get_version(MODEL, decision.version)
    # 60 users: too few to decide on (test_gate.py has the refusal on evidence)
    assert refused.tags["gate"] == "undecided"
    assert decision.reason.startswith("not decided: ")
    answer = httpx.get(f"{stack.url('recommender')}/users/{users(stack, 1)[0]}"
                       "/recommendations").json()
    assert answer["model"]["version"] == 1


def test_4_promote_and_roll_back_under_traffic_without_a_failed_request(stack: Stack) -> None:
    rec = stack.url("recommender")
    people = [*users(stack, 20), "someone-new"]
    seen: list[tuple[int, int | None]] = []
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = client.get(f"{rec}/users/{people[i % len(people)]}/recommendations?k=10")
                seen.append((r.status_code, r.json().get("model", {}).get("version")
                             if r.status_code == 200 else None))
                i += 1

    def wait_for_version(version: int) -> None:
        deadline = time.monotonic() + 30
        while not (seen and seen[-1][1] == version):
            assert time.monotonic() < deadline, f"the recommender never served v{version}"
            time.sleep(0.1)

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with Registry(settings=stack.system.settings()) as registry:
            latest = max(v.version for v in registry.list_versions(MODEL))
            registry.set_alias(MODEL, ALIAS, latest, reason="e2e: forced past the gate")
            wait_for_version(latest)
            back = registry.rollback(MODEL, ALIAS, reason="e2e: worse in production")
            assert back.version == 1
            wait_for_version(1)
            served = len(seen)
            wait_for(lambda: len(seen) >= served + 20, 60, "traffic after the rollback")
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = {status for status, _ in seen}
    versions = {version for _, version in seen}
    assert statuses == {200}, f"failed requests: {[s for s in seen if s[0] != 200][:5]}"
    assert {1, latest} <= versions
    assert len(seen) > 50


def three_free_ports() -> int:
    """A port p with p, p + 1 and p + 2 free: `music up --full` takes all three.

    Drawn below Linux's ephemeral range (32768 and up), where an outgoing connection
    could take p + 1 between this check and the start."""
    import random
    import socket

    for _ in range(200):
        first = random.randrange(10_000, 32_765)
        with contextlib.ExitStack() as bound:
            try:
                for port in (first, first + 1, first + 2):
                    bound.enter_context(socket.create_server(("127.0.0.1", port)))
            except OSError:
                continue
        return first
    raise AssertionError("no three consecutive free ports")


def children_of(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.timeout(600)
def test_5_sigterm_stops_music_up_full_and_every_child(stack: Stack) -> None:
    s = stack.system
    assert s.db_url is not None and s.redis_url is not None and s.broker_url is not None
    stack.stop()  # the last test: its services are not needed, and they share the CPU
    port = three_free_ports()
    command = [sys.executable, "-m", "music", "up", "--full", "--port", str(port),
               "--home", str(s.home), "--database", s.db_url, "--registry", s.db_url,
               "--redis", s.redis_url, "--broker", s.broker_url, "--prefix", s.prefix]
    log = stack.logs / "up-full.log"
    with log.open("wb") as out:
        up = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 2 * START_TIMEOUT_S  # three processes start at once
        for p in (port, port + 1, port + 2):  # the recommender, events, the worker
            while True:
                assert up.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "not up: " + log.read_text()[-3000:]
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{p}/v2/health/ready",
                                 timeout=2).status_code == 200:
                        break
                time.sleep(0.3)
        children.extend(children_of(up.pid))
        assert len(children) == 3
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0, log.read_text()[-3000:]
        # every child was waited for (reaped): none is left running, with parent 1 or not
        assert [c for c in children if Path(f"/proc/{c}").exists()] == []
    finally:  # leave nothing running, whatever failed
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        if up.poll() is None:
            up.kill()
            up.wait()
