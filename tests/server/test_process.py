"""`modelport serve` as a real process on a socket: SIGTERM drains, limits hold."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import toy_models

from modelport import Registry, Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    home = tmp_path / "home"
    with Registry(settings=Settings(home=home)) as reg:
        reg.register("slow", toy_models.SlowDoubler(), sample_input=np.ones((2, 3)))
    port = free_port()
    env = {**os.environ, "MODELPORT_HOME": str(home), "MODELPORT_SERVER__MAX_BODY_BYTES": "4096",
           "PYTHONPATH": str(Path(toy_models.__file__).parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelport", "serve", "slow:1", "--trusted", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read().decode()[-2000:]}")  # type: ignore[union-attr]
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("server did not become ready in 60 s")
    yield proc, url
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]


def serve_gated(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[str], int, Path, Path]:
    """`modelport serve` of toy_models.Gated: (process, port, gate, started). A call
    waits in the model while the `gate` file is absent; `started` appears when one has
    begun. Returns once the server says it is serving."""
    home, gate, started = tmp_path / "home", tmp_path / "gate", tmp_path / "gate.started"
    with Registry(settings=Settings(home=home)) as reg:
        reg.register("gated", toy_models.Gated(), sample_input=np.ones((2, 3)))
    gate.touch()  # open while the model loads (a warm-up call)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelport", "serve", "gated:1", "--trusted", "--port", str(port)],
        env={**os.environ, "MODELPORT_HOME": str(home), "TOY_GATE": str(gate),
             "PYTHONPATH": str(Path(toy_models.__file__).parent), **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while "serving gated:1" not in (line := proc.stderr.readline()):
        if not line:
            proc.wait()
            raise AssertionError("the server exited before it was ready")
    return proc, port, gate, started


def stop_gated(proc: subprocess.Popen[str], gate: Path) -> None:
    """Stop a `serve_gated` server, after a failed test too: with its gate closed, a
    call held in the model would keep the drain waiting for ever."""
    gate.touch()
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stderr.close()  # type: ignore[union-attr]


def test_sigterm_drains_in_flight_requests_then_exits(tmp_path: Path) -> None:
    proc, port, gate, started = serve_gated(tmp_path, MODELPORT_BATCHING__MAX_BATCH_SIZE="1")
    url = f"http://127.0.0.1:{port}"

    def ask(i: int) -> httpx.Response:
        return httpx.post(f"{url}/models/gated/predict", json={"instances": [[i, 0, 0]]},
                          timeout=30)

    try:
        gate.unlink()
        started.unlink()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(ask, i) for i in range(4)]
            # the requests are in: one held in the model, three queued behind it
            while not started.exists() or 'modelport_queue_depth{model="gated"} 3.0' \
                    not in httpx.get(f"{url}/metrics").text:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            gate.touch()
            answers = [f.result() for f in futures]
        assert [a.status_code for a in answers] == [200] * 4
        assert sorted(a.json()["predictions"][0] for a in answers) == [0.0, 2.0, 4.0, 6.0]
        assert proc.wait(timeout=30) == 0  # a drained SIGTERM is a clean stop
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]


def test_oversized_body_is_refused_before_it_is_sent(server) -> None:
    _, url = server
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # announce 1 GB, send none of it: the answer must come without the body
        sock.sendall(b"POST /models/slow/predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
        chunks = []
        while chunk := sock.recv(4096):  # the server closes the connection after it
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 413")
    assert "larger than the limit of 4096 bytes" in reply
    # and the server keeps serving
    ok = httpx.post(f"{url}/models/slow/predict", json={"instances": [[1, 1, 1]]}, timeout=30)
    assert ok.status_code == 200


def test_a_port_in_use_is_one_line_before_anything_says_serving(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Registry(settings=Settings(home=home)) as reg:
        reg.register("slow", toy_models.SlowDoubler(), sample_input=np.ones((2, 3)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "modelport", "serve", "slow:1", "--trusted",
             "--port", str(port)],
            env={**os.environ, "MODELPORT_HOME": str(home),
                 "PYTHONPATH": str(Path(toy_models.__file__).parent)},
            capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == f"error: port {port} is in use; pass --port"


@pytest.mark.parametrize(("host", "reached_at"), [
    (None, "127.0.0.1"),
    ("::", "[::1]"),  # every address, IPv6 included: the request goes to loopback
])
def test_serve_prints_a_request_that_works_and_refuses_what_it_cannot_serve(
        tmp_path: Path, host: str | None, reached_at: str) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    home = tmp_path / "home"
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    with Registry(settings=Settings(home=home)) as reg:
        reg.register("cancer", LogisticRegression(max_iter=5000).fit(X, y), sample_input=X[:3])
    env = {**os.environ, "MODELPORT_HOME": str(home)}
    command = [sys.executable, "-m", "modelport", "serve"]

    absent = subprocess.run([*command, "nope@production", "--port", str(free_port())],
                            env=env, capture_output=True, text=True, timeout=120)
    assert absent.returncode == 1
    assert absent.stderr == "error: model nope@production: no model named 'nope'\n"

    port = free_port()
    proc = subprocess.Popen([*command, "cancer:1", "--port", str(port),
                             *(["--host", host] if host else [])], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        # among the log's JSON lines, once the model is loaded, what `serve` says
        said: list[str] = []
        while len(said) < 2 and (line := proc.stderr.readline()):
            if not line.startswith("{"):
                said.append(line)
        assert said[0].startswith(f"serving cancer:1 on http://{reached_at}:{port}")
        curl = said[1].strip().removeprefix("try: ")
        assert "'mean radius'" not in curl and '"mean radius":17.99' in curl
        done = subprocess.run(curl + " -sS -w '\\n%{http_code}'", shell=True,
                              capture_output=True, text=True, timeout=30)
        body, status = done.stdout.rsplit("\n", 1)
        assert status == "200", body
        assert f"http://{reached_at}:{port}/models/cancer/predict" in curl
        assert httpx.get(f"http://{reached_at}:{port}/").text.count("mean radius") >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        proc.stderr.close()  # type: ignore[union-attr]


def read_response(sock: socket.socket) -> str:
    """One HTTP/1.1 response with a Content-Length, read whole from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed without an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed mid-answer"
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_request_on_an_idle_keep_alive_connection_during_the_drain_is_answered(
        tmp_path: Path) -> None:
    proc, port, gate, started = serve_gated(tmp_path)
    url = f"http://127.0.0.1:{port}"
    body = b'{"instances": [[1, 2, 3]]}'
    request = (b"POST /models/gated/predict HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(body), body))
    try:
        with ThreadPoolExecutor(1) as pool, \
                socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            # a keep-alive connection that has had its answer and sits idle
            idle.sendall(request)
            first = read_response(idle)
            assert first.startswith("HTTP/1.1 200") and "connection: close" not in first
            gate.unlink()
            started.unlink()
            # a request held in flight keeps the server draining
            held = pool.submit(httpx.post, f"{url}/models/gated/predict",
                               json={"instances": [[0, 0, 1]]}, timeout=30)
            while not started.exists():  # the model has it
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            # the listener closes when the drain begins: new connections are refused
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                except (ConnectionRefusedError, ConnectionResetError):
                    break
            # the idle connection's next request arrives during the drain
            idle.sendall(request)
            gate.touch()
            reply = read_response(idle)
            assert reply.startswith("HTTP/1.1 200"), reply
            assert "connection: close" in reply.lower()
            assert '"predictions":[12.0]' in reply
            assert idle.recv(1) == b""  # and the server closed the connection
            assert held.result().status_code == 200
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]


@pytest.mark.parametrize(("retriever", "writer", "said"), [
    ("{type: sql, url: 'sqlite:///DIR/db.sqlite', table: features}",
     "{type: sql, url: 'sqlite:///DIR/db.sqlite', table: scores}",  # no `create: true`
     "SQL database sqlite:///DIR/db.sqlite has no table scores"),
    ("{type: redis, url: 'redis://127.0.0.1:CLOSED/0'}",
     "{type: sql, url: 'sqlite:///DIR/db.sqlite', table: scores, create: true}",
     "Redis redis://127.0.0.1:CLOSED/0 is unavailable: "),
    ("{type: http, url: 'http://127.0.0.1:CLOSED/users/{key}'}",
     "{type: sql, url: 'sqlite:///DIR/db.sqlite', table: scores, create: true}",
     "HTTP service http://127.0.0.1:CLOSED/users/{key} is unavailable: "),
], ids=["table-missing", "redis-down", "http-down"])
def test_serve_refuses_a_pipeline_it_cannot_run_before_saying_serving(
        tmp_path: Path, retriever: str, writer: str, said: str) -> None:
    import sqlite3

    from sklearn.linear_model import LogisticRegression

    home = tmp_path / "home"
    X = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    with Registry(settings=Settings(home=home)) as reg:
        reg.register("m", LogisticRegression().fit(X, [0, 0, 1, 1]), sample_input=X[:2])
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        db.execute("CREATE TABLE features (id INTEGER PRIMARY KEY, a REAL, b REAL)")
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = str(closed.getsockname()[1])

        def fill(text: str) -> str:
            return text.replace("DIR", str(tmp_path)).replace("CLOSED", port)

        config = tmp_path / "modelport.yaml"
        config.write_text(fill(f"pipelines:\n  - name: p\n    model: m:1\n"
                               f"    retriever: {retriever}\n    writer: {writer}\n"))
        done = subprocess.run(
            [sys.executable, "-m", "modelport", "serve", "-c", str(config),
             "--port", str(free_port())],
            env={**os.environ, "MODELPORT_HOME": str(home)},
            capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith(f"error: pipeline p: {fill(said)}"), lines


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response off `sock`: status, headers (lower-case names), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"the connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(4096)
        assert chunk, "the connection closed mid-body"
        body += chunk
    assert len(body) == int(headers["content-length"]), "more than one response came"
    return int(status_line.split()[1]), headers, body


def hold_one_and_queue_one(pool: ThreadPoolExecutor, url: str, gate: Path, started: Path
                           ) -> tuple[Future[httpx.Response], Future[httpx.Response]]:
    """With the gate closed, one prediction held in the gated model (answers [2.0]) and
    one queued behind it (answers [4.0]), once the queue's depth says so."""
    def ask(i: int) -> httpx.Response:
        return httpx.post(f"{url}/models/gated/predict", json={"instances": [[i, 0, 0]]},
                          timeout=30)

    gate.unlink()
    started.unlink()
    held = pool.submit(ask, 1)
    while not started.exists():  # one in the model …
        time.sleep(0.01)
    queued = pool.submit(ask, 2)
    while 'modelport_queue_depth{model="gated"} 1.0' not in httpx.get(
            f"{url}/metrics").text:  # … and one queued
        time.sleep(0.01)
    return held, queued


def stopped(pid: int) -> bool:
    """Whether every thread of process `pid` is stopped (SIGSTOP)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return all((t / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for t in tasks)


def test_a_burst_with_one_slot_free_lets_one_request_through_and_refuses_the_rest_from_heads(
        tmp_path: Path) -> None:
    """Heads read in one turn of the server's loop all saw the one free slot: each was
    let through, had its body read and parsed, and all but one were then refused. Here
    the server is stopped while six heads arrive (their bodies held back), so it reads
    them in one turn: five are refused from the head alone, without their bodies."""
    proc, port, gate, started = serve_gated(tmp_path, MODELPORT_BATCHING__MAX_BATCH_SIZE="1",
                                            MODELPORT_BATCHING__MAX_QUEUE="2")
    url = f"http://127.0.0.1:{port}"
    body = b'{"instances": [[7, 0, 0]]}'
    head = (b"POST /models/gated/predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))

    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(6)]
    try:
        for sock in socks:  # accepted and idle before the burst
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(sock)[0] == 200
        with ThreadPoolExecutor(2) as pool:
            held, queued = hold_one_and_queue_one(pool, url, gate, started)
            proc.send_signal(signal.SIGSTOP)
            try:
                while not stopped(proc.pid):  # a signal is delivered in its own time
                    time.sleep(0.01)
                for sock in socks:
                    sock.sendall(head)
            finally:
                proc.send_signal(signal.SIGCONT)
            waiting = list(socks)
            refused = 0
            while len(waiting) > 1:  # the refusals come without the bodies being sent
                ready, _, _ = select.select(waiting, [], [], 30)
                assert ready, f"{len(waiting)} requests unanswered: let through to wait for a body"
                for sock in ready:
                    status, _, answer = _read_response(sock)
                    assert status == 503 and b"queue is full" in answer
                    refused += 1
                    waiting.remove(sock)
            assert refused == 5
            [admitted] = waiting
            admitted.sendall(body)
            gate.touch()
            status, _, answer = _read_response(admitted)
            assert (status, json.loads(answer)["predictions"]) == (200, [14.0])
            assert [held.result().json()["predictions"], queued.result().json()["predictions"]] \
                == [[2.0], [4.0]]
    finally:
        for sock in socks:
            sock.close()
        stop_gated(proc, gate)


def test_a_full_queue_is_refused_from_the_request_head_and_the_connection_lives_on(
        tmp_path: Path) -> None:
    proc, port, gate, started = serve_gated(tmp_path, MODELPORT_BATCHING__MAX_BATCH_SIZE="1",
                                            MODELPORT_BATCHING__MAX_QUEUE="1")
    url = f"http://127.0.0.1:{port}"
    body = b'{"instances": [[5, 0, 0]]}'
    predict = (b"POST /models/gated/predict HTTP/1.1\r\nHost: x\r\nX-Request-ID: req-7\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(body), body))

    try:
        with ThreadPoolExecutor(2) as pool:
            held, queued = hold_one_and_queue_one(pool, url, gate, started)  # queue full
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(predict)
                status, headers, answer = _read_response(sock)
                assert status == 503
                assert headers["retry-after"] == "1"
                assert headers["x-request-id"] == "req-7"
                assert headers["content-type"] == "application/json"
                assert "queue is full" in answer.decode()
                # the body was skipped, not read as the next request: the same
                # connection serves the next one
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _read_response(sock)[0] == 200
                # a refusal without an id gets a new one of its own, and the current date
                # (the answer is built once: these are the parts that change)
                anonymous = predict.replace(b"X-Request-ID: req-7\r\n", b"")
                sock.sendall(anonymous)
                first = _read_response(sock)[1]
                ids, deadline = {first["x-request-id"]}, time.monotonic() + 10
                while True:
                    sock.sendall(anonymous)
                    status, headers, _ = _read_response(sock)
                    assert status == 503 and headers["x-request-id"] not in ids
                    ids.add(headers["x-request-id"])
                    if headers["date"] != first["date"] or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert headers["date"] != first["date"], "the refusals' date never changed"
                assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).hex == i for i in ids)
                # a request that closes its connection is refused the usual way
                sock.sendall(predict.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n"))
                status, headers, answer = _read_response(sock)
                assert status == 503 and headers["connection"] == "close"
            gate.touch()
            assert [held.result().json()["predictions"], queued.result().json()["predictions"]] \
                == [[2.0], [4.0]]
        metrics = httpx.get(f"{url}/metrics").text
        refusals = len(ids) + 2
        assert f'modelport_rejections_total{{model="gated",reason="queue_full"}} {refusals}.0' \
            in metrics
        assert f'model="gated",route="predict",status="503",version="1"}} {refusals}.0' in metrics
    finally:
        stop_gated(proc, gate)
