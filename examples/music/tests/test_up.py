"""`music up --workers N`: several processes serving one embedded system on one port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from music.app import Running
from music.store import Store
from music.system import System


def test_one_process_of_a_system_holds_the_nightly_lock(tmp_path: Path) -> None:
    lock = tmp_path / "music" / "nightly.lock"
    first, second = Running.__new__(Running), Running.__new__(Running)
    first.locks, second.locks = [], []
    assert first.hold(lock)
    assert not second.hold(lock)  # another process (here: another open file) has it
    first.locks.pop().close()  # the first one stops
    assert second.hold(lock)
    second.locks.pop().close()


@pytest.fixture
def up(system: System, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "music", "up", "--home", str(system.home), "--port",
             str(port), "--workers", "2"], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "music up did not start: " + log.read_text()
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield url, server, log
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_process_serves_the_same_system(
        up: tuple[str, subprocess.Popen[bytes], Path], system: System) -> None:
    url, _, log = up
    # both processes started the system; the nightly jobs run in one of them only
    deadline = time.monotonic() + 60
    while log.read_text().count("the nightly jobs run in another process") < 1:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)
    assert log.read_text().count("the nightly jobs run in another process") == 1
    store = Store(system)
    try:
        user = str(store.users("", 1)[0]["user_id"])
        catalog = list(store.catalog())
    finally:
        store.close()
    with httpx.Client(base_url=url, timeout=10) as client:
        heard = {x["track"] for x in client.get(f"/users/{user}/history?n=50").json()["listens"]}
        track = next(t for t in reversed(catalog) if t not in heard)
        assert client.post("/listens", json={"user": user, "track": track}).status_code \
            in (200, 201, 202)
        # whichever process answers (new connections, so both are asked), the listen
        # is in the history within a few seconds, and out of the recommendations
        deadline = time.monotonic() + 10
        while True:
            answers = []
            for _ in range(8):
                with httpx.Client(base_url=url, timeout=10) as fresh:
                    history = fresh.get(f"/users/{user}/history?n=5").json()
                    recs = fresh.get(f"/users/{user}/recommendations?k=10").json()
                answers.append((track in [x["track"] for x in history["listens"]],
                                track not in [x["track"] for x in recs["items"]]))
            if all(seen and excluded for seen, excluded in answers):
                break
            assert time.monotonic() < deadline, answers
            time.sleep(0.3)


def test_metrics_of_any_process_count_every_process(
        up: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    url, _, _ = up
    loaded = re.compile(r'^modelport_model_loads_total\{[^}]*outcome="loaded"[^}]*\} (\S+)$',
                        re.MULTILINE)
    deadline = time.monotonic() + 60
    while True:
        counts = []
        for _ in range(8):  # new connections: both processes answer some of them
            with httpx.Client(base_url=url, timeout=10) as fresh:
                counts.append(sum(float(v) for v in loaded.findall(fresh.get("/metrics").text)))
        # each process loaded the model once: every answer counts both loads
        if counts == [2.0] * 8:
            break
        assert time.monotonic() < deadline, counts
        time.sleep(0.5)
