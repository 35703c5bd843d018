"""`modelport stream` with a shadow and a `shadow_writer`: every message's shadow result
reaches the side sink (a stream, or a SQL table), and the main sink holds the
primary's results as without one. Against the real Redis."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pandas as pd
import pytest
import redis
from sklearn.tree import DecisionTreeClassifier
from stream_helpers import cancer, patients, redis_url, unique_name

from modelport import Registry, Settings
from modelport.cli import run

MESSAGES = 45


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """The command configures logging for its process: give pytest's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def stream() -> Iterator[str]:
    url = redis_url()
    name = unique_name("mp-shadow-")
    yield name
    redis.Redis.from_url(url).delete(name, f"{name}.dlq", f"{name}.shadow")


def table(db: Path, name: str) -> dict[str, tuple[int, int]]:
    with sqlite3.connect(db) as conn:
        return {k: (p, v) for k, p, v in conn.execute(
            f"SELECT id, predictions, version FROM {name}")}


@pytest.mark.parametrize("side", ["stream", "sql"])
def test_every_messages_shadow_result_reaches_the_side_sink(
        tmp_path: Path, stream: str, side: str) -> None:
    X, primary = cancer()
    shadow = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, primary.predict(X))
    home = tmp_path / "home"
    with Registry(settings=Settings(home=home)) as reg:
        reg.register("cancer", primary, sample_input=X[:5])  # type: ignore[index]
        reg.register("cancer", shadow, sample_input=X[:5])  # type: ignore[index]
    records = patients(MESSAGES)
    client = redis.Redis.from_url(redis_url())
    for i, record in enumerate(records):
        client.xadd(stream, {"payload": orjson.dumps({"id": f"p{i}", "data": record})})
    side_writer = f"{{type: stream, subject: {stream}.shadow}}" if side == "stream" else \
        f"{{type: sql, url: 'sqlite:///{tmp_path}/shadow.db', table: scores, create: true}}"
    config = tmp_path / "modelport.yaml"
    config.write_text(f"""
models: [{{ref: "cancer:1", shadow: "cancer:2"}}]
pipelines:
  - name: score
    model: "cancer:1"
    writer: {{type: sql, url: 'sqlite:///{tmp_path}/scores.db', table: scores, create: true}}
    shadow_writer: {side_writer}
    outputs: [predictions]
    version_column: version
    stream:
      broker: {{type: redis, url: '{redis_url()}', stream: {stream}, group: g}}
      dead_letter: {stream}.dlq
      batch_size: 10
""")
    assert run(["--home", str(home), "stream", "score", "--config", str(config), "--burst"],
               Settings()) == 0

    frame = pd.DataFrame(records)
    ids = [f"p{i}" for i in range(MESSAGES)]
    want_primary = dict(zip(ids, primary.predict(frame).tolist(), strict=True))
    want_shadow = dict(zip(ids, shadow.predict(frame).tolist(), strict=True))
    assert want_primary != want_shadow
    main = table(tmp_path / "scores.db", "scores")
    assert main == {k: (p, 1) for k, p in want_primary.items()}
    if side == "stream":
        out = [orjson.loads(fields[b"payload"])
               for _, fields in client.xrange(f"{stream}.shadow")]
        got = {m["id"]: (m["predictions"], m["version"]) for m in out}
        assert len(out) == MESSAGES  # each message's shadow result once
    else:
        got = table(tmp_path / "shadow.db", "scores")
    assert got == {k: (p, 2) for k, p in want_shadow.items()}
    assert client.xlen(f"{stream}.dlq") == 0
