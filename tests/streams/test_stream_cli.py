"""`modelport stream`: configuration errors, a burst run, results published to a stream,
SIGTERM finishing the batch in flight, the drain timeout, metrics. Against the real
Redis; results in a SQLite file (the crash test covers PostgreSQL)."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from stream_helpers import cancer, patients, redis_url, unique_name

from modelport import Registry, Settings
from modelport.cli import run

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """The command configures logging for its process: give pytest's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def home(tmp_path: Path) -> Path:
    X, clf = cancer()
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register("cancer", clf, sample_input=X[:5])  # type: ignore[index]
    reg.close()
    return tmp_path / "home"


@pytest.fixture
def stream() -> Iterator[str]:
    url = redis_url()
    name = unique_name("mp-cli-")
    yield name
    redis.Redis.from_url(url).delete(name, f"{name}.dlq", f"{name}.out")


def write_config(tmp: Path, stream: str, *, writer: str | None = None, pre: str = "",
                 extra: str = "") -> Path:
    writer = writer or f"{{type: sql, url: 'sqlite:///{tmp}/scores.db', table: scores, " \
                       "create: true}"
    path = tmp / "modelport.yaml"
    path.write_text(f"""
models: [{{ref: "cancer:1"}}]
pipelines:
  - name: score
    model: "cancer:1"
    writer: {writer}
    {f"pre: '{pre}'" if pre else ""}
    stream:
      broker: {{type: redis, url: '{redis_url()}', stream: {stream}, group: g,
                claim_idle_ms: 60000}}
      dead_letter: {stream}.dlq
      batch_size: 10
      {extra}
""")
    return path


def publish(stream: str, n: int, *poison: bytes) -> None:
    client = redis.Redis.from_url(redis_url())
    for i, record in enumerate(patients(n)):
        client.xadd(stream, {"payload": orjson.dumps({"id": f"p{i}", "data": record})})
    for p in poison:
        client.xadd(stream, {"payload": p})


def rows(tmp: Path) -> int:
    if not (tmp / "scores.db").exists():
        return 0
    with sqlite3.connect(tmp / "scores.db") as db:
        try:
            return int(db.execute("SELECT count(*) FROM scores").fetchone()[0])
        except sqlite3.OperationalError:  # the writer creates it at its first write
            return 0


def group(stream: str) -> dict[str, int]:
    [info] = redis.Redis.from_url(redis_url()).xinfo_groups(stream)
    return {"pending": int(info["pending"]), "lag": int(info["lag"])}


def test_a_burst_run_scores_dead_letters_and_exits(tmp_path: Path, home: Path,
                                                   stream: str) -> None:
    publish(stream, 25, b"{not json")
    config = write_config(tmp_path, stream)
    code = run(["--home", str(home), "stream", "score", "--config", str(config), "--burst"],
               Settings())
    assert code == 0 and rows(tmp_path) == 25
    [(_, letter)] = redis.Redis.from_url(redis_url()).xrange(f"{stream}.dlq")
    assert "not valid json" in orjson.loads(letter[b"payload"])["reason"]
    assert group(stream) == {"pending": 0, "lag": 0}


def test_results_can_be_published_to_a_stream_keyed_by_message_id(
        tmp_path: Path, home: Path, stream: str) -> None:
    publish(stream, 12)
    config = write_config(tmp_path, stream, writer=f"{{type: stream, subject: {stream}.out}}")
    assert run(["--home", str(home), "stream", "score", "--config", str(config), "--burst"],
               Settings()) == 0
    out = redis.Redis.from_url(redis_url()).xrange(f"{stream}.out")
    assert len(out) == 12
    first = orjson.loads(out[0][1][b"payload"])
    assert first["id"] == "p0" and out[0][1][b"key"] == b"p0"
    assert first["predictions"] in (0, 1) and len(first["probabilities"]) == 2


@pytest.mark.parametrize(("extra", "message"), [
    ("batch_size: 0", "pipelines.0.stream.batch_size: Input should be greater than or "
                      "equal to 1"),
    ("codec: xml", "pipelines.0.stream.codec: Input should be 'json', 'msgpack' or 'avro'"),
    ("colour: red", "pipelines.0.stream.colour: not an option here (misspelt?)"),
])
def test_bad_stream_settings_name_their_key(tmp_path: Path, home: Path, extra: str,
                                            message: str, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    config = write_config(tmp_path, "s", extra=extra)
    assert run(["--home", str(home), "stream", "score", "--config", str(config)],
               Settings()) == 1
    assert message in " ".join(capsys.readouterr().err.split())


def test_unknown_broker_options_and_missing_sections_are_named(
        tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "s")
    config.write_text(config.read_text().replace("claim_idle_ms", "claim_idle"))
    assert run(["--home", str(home), "stream", "score", "--config", str(config)],
               Settings()) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "pipeline 'score': stream.broker: got an unexpected keyword argument 'claim_idle'" \
        in err
    config.write_text("pipelines: [{name: score, model: 'cancer:1'}]")
    assert run(["--home", str(home), "stream", "score", "--config", str(config)],
               Settings()) == 1
    assert "pipeline 'score' has no stream: section" in capsys.readouterr().err


def start(home: Path, config: Path, *args: str, step_s: float) -> subprocess.Popen[str]:
    path = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "PYTHONPATH": path, "MP_TEST_STEP_S": str(step_s)}
    return subprocess.Popen(
        [sys.executable, "-m", "modelport", "--home", str(home), "stream", "score",
         "--config", str(config), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def wait_until(check: object, timeout: float, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError("gave up waiting")
        time.sleep(0.1)


def test_sigterm_finishes_and_acks_the_batch_in_flight(
        tmp_path: Path, home: Path, stream: str) -> None:
    publish(stream, 200)
    config = write_config(tmp_path, stream, pre="stream_steps:slow")
    proc = start(home, config, step_s=0.3)
    try:
        wait_until(lambda: rows(tmp_path) >= 20, 90, proc)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 0, output
    written, state = rows(tmp_path), group(stream)
    assert 20 <= written < 200
    assert state["pending"] == 0  # every batch it took was written and acknowledged
    assert state["lag"] == 200 - written
    assert "SIGTERM: finishing the batch in flight" in output


def test_metrics_are_served_while_consuming(tmp_path: Path, home: Path, stream: str) -> None:
    publish(stream, 100)
    config = write_config(tmp_path, stream, pre="stream_steps:slow")
    port = 9400 + os.getpid() % 500
    proc = start(home, config, "--metrics-port", str(port), step_s=0.2)
    expected = ['modelport_stream_messages_total{outcome="processed",pipeline="score"}',
                'modelport_stream_lag{pipeline="score"}']
    scraped = [""]

    def reported() -> bool:  # a batch acknowledged, and the first lag query answered
        try:
            scraped[0] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                timeout=5).read().decode()
        except OSError:  # not listening yet
            return False
        return all(line in scraped[0] for line in expected)

    try:
        wait_until(lambda: rows(tmp_path) >= 10, 90, proc)
        wait_until(reported, 90, proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert all(line in scraped[0] for line in expected)


def test_the_drain_timeout_abandons_a_stuck_batch_unacknowledged(
        tmp_path: Path, home: Path, stream: str) -> None:
    publish(stream, 30)
    config = write_config(tmp_path, stream, writer="{type: 'stream_steps:SlowWriter'}")
    proc = start(home, config, "--drain-timeout", "1", step_s=60)
    try:
        wait_until(lambda: group(stream)["pending"] > 0 if _has_group(stream) else False, 90,
                   proc)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        stop(proc)
    assert proc.returncode == 1 and took < 10, output
    assert "drain timeout" in output
    assert group(stream)["pending"] > 0  # left for a claim: delivered again


def _has_group(stream: str) -> bool:
    try:
        return bool(redis.Redis.from_url(redis_url()).xinfo_groups(stream))
    except redis.ResponseError:
        return False


@pytest.mark.parametrize(("writer", "ref", "problem"), [
    (None, "nosuch:1", "model nosuch:1"),
    ("{type: sql, url: 'sqlite:///TMP/scores.db', table: scores}", "cancer:1",
     "pipeline score: SQL database sqlite:///TMP/scores.db has no table scores"),
])
def test_a_configuration_error_is_one_line_and_exit_1_before_consuming(
        tmp_path: Path, home: Path, stream: str, writer: str | None, ref: str, problem: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    publish(stream, 6)
    config = write_config(tmp_path, stream,
                          writer=writer.replace("TMP", str(tmp_path)) if writer else None)
    config.write_text(config.read_text().replace("cancer:1", ref))
    code = run(["--home", str(home), "stream", "score", "--config", str(config), "--burst"],
               Settings())
    out, err = capsys.readouterr()
    [line] = [x for x in err.splitlines() if not x.startswith("{")]  # the rest: JSON logs
    assert code == 1 and line.startswith("error: ") and problem.replace("TMP", str(tmp_path)) \
        in line, err
    assert "consuming" not in out + err and "retrying" not in out + err
    assert redis.Redis.from_url(redis_url()).xlen(f"{stream}.dlq") == 0
    assert not _has_group(stream) or group(stream)["pending"] == 0  # nothing taken


def test_an_unreachable_broker_at_start_is_a_configuration_error(
        tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "s")
    config.write_text(config.read_text().replace(redis_url(), "redis://127.0.0.1:1/0"))
    code = run(["--home", str(home), "stream", "score", "--config", str(config), "--burst"],
               Settings())
    out, err = capsys.readouterr()
    assert code == 1 and "stream redis s:" in err, err
    assert "consuming" not in out + err
