"""The stream worker over the in-memory broker: acks after writes, dead letters, outages."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from stream_helpers import cancer, cancer_dataplane

from modelport import Registry, Settings
from modelport.dataplane import DataPlane, ModelConfig
from modelport.errors import ConfigError, InvalidInput, ModelportError, NotReady
from modelport.pipeline import Frame, MemoryWriter, Pipeline
from modelport.streams.base import Message
from modelport.streams.memory import MemoryBroker, MemoryBus
from modelport.streams.worker import StreamWorker
from waiting import until


@pytest.fixture
async def dataplane(settings: Settings) -> AsyncIterator[DataPlane]:
    async with cancer_dataplane(settings) as dp:
        yield dp


def publish_patients(bus: MemoryBus, n: int) -> list[dict[str, float]]:
    X, _ = cancer()
    records = X[:n].to_dict(orient="records")  # type: ignore[index]
    for i, record in enumerate(records):
        envelope = {"id": f"p{i}", "key": i % 7, "data": record}
        bus.append("patients", orjson.dumps(envelope))
    return records


class FlakyWriter(MemoryWriter):
    """Down for the first `outages` writes, like a database restarting."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages

    async def write(self, frame: Frame) -> None:
        if self.outages:
            self.outages -= 1
            raise NotReady("database at db:5432 is unavailable")
        await super().write(frame)


async def test_every_message_scored_once_and_poison_dead_lettered(dataplane) -> None:
    bus = MemoryBus()
    records = publish_patients(bus, 50)
    bus.append("patients", b"{not json")
    bus.append("patients", orjson.dumps({"id": "bad", "data": {**records[0], "mean radius": "x"}}))
    bus.append("patients", orjson.dumps([1, 2, 3]))
    writer = MemoryWriter()
    pipe = Pipeline("score", "cancer", dataplane, writer=writer)
    worker = StreamWorker(pipe, MemoryBroker(bus, "patients"), dead_letter_subject="patients.dlq",
                          batch_size=16, fetch_timeout=0.05)
    stats = await worker.run(burst=True)
    assert set(writer.rows) == {f"p{i}" for i in range(50)}
    assert writer.rows["p3"]["key"] == 3
    dead = [orjson.loads(m) for m in bus.messages("patients.dlq")]
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == 3 and stats.dead_lettered == 3 and stats.processed == 50
    assert any("not valid json" in r for r in reasons)
    assert any("column 'mean radius': expected FP64, got string 'x'" in r for r in reasons)
    assert any("row of 30 values" in r for r in reasons)
    assert {d["payload"] for d in dead} >= {"{not json", "[1,2,3]"}
    assert await MemoryBroker(bus, "patients").lag() == 0  # all acknowledged


async def test_sink_outage_is_retried_without_losing_or_acking_early(dataplane) -> None:
    bus = MemoryBus()
    publish_patients(bus, 20)
    writer = FlakyWriter(outages=3)
    broker = MemoryBroker(bus, "patients")
    pipe = Pipeline("score", "cancer", dataplane, writer=writer)
    worker = StreamWorker(pipe, broker, dead_letter_subject="dlq", batch_size=64,
                          fetch_timeout=0.05)
    await worker.run(burst=True)
    assert len(writer.rows) == 20
    assert bus.messages("dlq") == []
    assert await broker.lag() == 0


async def test_unacknowledged_messages_come_back_and_are_written_once(dataplane) -> None:
    bus = MemoryBus()
    publish_patients(bus, 10)
    writer = MemoryWriter()
    pipe = Pipeline("score", "cancer", dataplane, writer=writer)
    # a worker that "dies" after writing but before acking: its messages come back
    dying = MemoryBroker(bus, "patients", ack_wait=0.1)
    messages = await dying.fetch(10, 0.1)
    await pipe.write(await pipe.score(Frame.from_records(
        [f"p{i}" for i in range(10)], [orjson.loads(m.payload)["data"] for m in messages])))
    await asyncio.sleep(0.15)
    worker = StreamWorker(pipe, MemoryBroker(bus, "patients"), dead_letter_subject="dlq",
                          fetch_timeout=0.05)
    stats = await worker.run(burst=True)
    assert stats.redeliveries == 10
    assert len(writer.rows) == 10  # upsert by message id: exactly one row each


async def test_too_many_deliveries_go_to_the_dead_letter_stream(dataplane) -> None:
    bus = MemoryBus()
    publish_patients(bus, 1)
    dying = MemoryBroker(bus, "patients", ack_wait=0)
    for _ in range(3):
        await dying.fetch(1, 0.01)  # delivered, never acked
    pipe = Pipeline("score", "cancer", dataplane, writer=MemoryWriter())
    worker = StreamWorker(pipe, MemoryBroker(bus, "patients"), dead_letter_subject="dlq",
                          max_deliveries=3, fetch_timeout=0.05)
    await worker.run(burst=True)
    [dead] = [orjson.loads(m) for m in bus.messages("dlq")]
    assert dead["deliveries"] == 4 and "delivered 4 times" in dead["reason"]


async def test_stop_finishes_the_batch_in_flight(dataplane) -> None:
    bus = MemoryBus()
    publish_patients(bus, 30)
    writer = MemoryWriter()
    pipe = Pipeline("score", "cancer", dataplane, writer=writer)
    worker = StreamWorker(pipe, MemoryBroker(bus, "patients"), dead_letter_subject="dlq",
                          batch_size=10, fetch_timeout=0.05)
    task = asyncio.create_task(worker.run())
    await until(lambda: writer.rows, what="a batch written")
    worker.stop()
    stats = await asyncio.wait_for(task, 5)
    assert stats.processed == len(writer.rows)  # everything written was acknowledged
    assert await MemoryBroker(bus, "patients").lag() == 30 - stats.processed


class Recording(MemoryBroker):
    """Notes each fetch as it starts in a log (which scoring steps write to too)."""

    def __init__(self, bus: MemoryBus, log: list[str]) -> None:
        super().__init__(bus, "patients")
        self.log = log

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        self.log.append("fetch")
        return await super().fetch(max_messages, timeout)


async def test_after_a_full_batch_the_next_is_read_while_it_is_scored(dataplane) -> None:
    bus = MemoryBus()
    publish_patients(bus, 25)
    log: list[str] = []

    def scoring(frame: Frame) -> Frame:
        log.append(f"score {len(frame)}")
        return frame

    pipe = Pipeline("score", "cancer", dataplane, writer=MemoryWriter(), pre=scoring)
    worker = StreamWorker(pipe, Recording(bus, log), dead_letter_subject="dlq",
                          batch_size=10, fetch_timeout=0.05)
    stats = await asyncio.wait_for(worker.run(burst=True), 10)
    assert stats.processed == 25
    # a full batch: the next one is being read before it is scored; the last, partial
    # one (the stream ran dry) is scored before anything more is read
    assert log == ["fetch", "fetch", "score 10", "fetch", "score 10", "score 5", "fetch"]


async def test_stopping_finishes_the_batch_read_ahead_too(dataplane) -> None:
    bus = MemoryBus()
    publish_patients(bus, 30)
    log: list[str] = []

    def stop_while_scoring(frame: Frame) -> Frame:
        worker.stop()  # the first batch is being scored: the second has been read
        return frame

    writer = MemoryWriter()
    pipe = Pipeline("score", "cancer", dataplane, writer=writer, pre=stop_while_scoring)
    worker = StreamWorker(pipe, Recording(bus, log), dead_letter_subject="dlq",
                          batch_size=10, fetch_timeout=0.05)
    stats = await asyncio.wait_for(worker.run(), 5)
    delivered = [e for e in bus.streams["patients"] if e.deliveries]
    assert len(delivered) == 20 and all(e.acked for e in delivered)  # none left pending
    assert stats.processed == len(writer.rows) == 20
    assert log == ["fetch", "fetch"]  # and nothing more read once stopping


async def test_a_record_missing_a_field_rejects_only_itself_even_first(dataplane) -> None:
    bus = MemoryBus()
    X, _ = cancer()
    first = X[:1].to_dict(orient="records")[0]  # type: ignore[index]
    del first["mean radius"]
    bus.append("patients", orjson.dumps({"id": "missing", "data": first}))
    publish_patients(bus, 10)
    writer = MemoryWriter()
    pipe = Pipeline("score", "cancer", dataplane, writer=writer)
    worker = StreamWorker(pipe, MemoryBroker(bus, "patients"), dead_letter_subject="dlq",
                          fetch_timeout=0.05)
    stats = await worker.run(burst=True)
    assert set(writer.rows) == {f"p{i}" for i in range(10)}
    [dead] = [orjson.loads(m) for m in bus.messages("dlq")]
    assert "'mean radius'" in dead["reason"] and stats.dead_lettered == 1


@pytest.mark.parametrize("neighbours", [0, 3])
async def test_an_empty_record_is_a_missing_field_as_http_says(settings, neighbours) -> None:
    """`"data": {}` names the field it lacks in the words HTTP uses (not as a null),
    alone in its batch or beside records that have every field."""
    X, clf = cancer()
    reg = Registry(settings=settings)
    reg.register("array", clf, sample_input=X.to_numpy()[:5])  # type: ignore[union-attr]
    dp = DataPlane(reg, settings, [ModelConfig(ref="array:1")])
    await dp.start(follow=False)
    try:
        with pytest.raises(InvalidInput) as http:
            dp.deployment("array").model.signature.decode([{}])  # what HTTP answers
        bus = MemoryBus()
        bus.append("patients", orjson.dumps({"id": "empty", "data": {}}))
        for i in range(neighbours):
            bus.append("patients", orjson.dumps({"id": f"p{i}", "data": {
                "input": X.to_numpy()[i].tolist()}}))  # type: ignore[union-attr]
        writer = MemoryWriter()
        worker = StreamWorker(Pipeline("score", "array", dp, writer=writer),
                              MemoryBroker(bus, "patients"), dead_letter_subject="dlq",
                              fetch_timeout=0.05)
        await worker.run(burst=True)
    finally:
        await dp.stop()
        reg.close()
    [dead] = [orjson.loads(m) for m in bus.messages("dlq")]
    assert http.value.message == "row 0: missing field 'input'"
    assert dead["reason"] == "missing field 'input'"
    assert set(writer.rows) == {f"p{i}" for i in range(neighbours)}


async def test_the_same_id_twice_in_one_batch_is_written_once_and_both_acked(dataplane) -> None:
    bus = MemoryBus()
    records = publish_patients(bus, 3)
    bus.append("patients", orjson.dumps({"id": "p1", "data": records[2]}))  # a later version
    assert records[1] != records[2]
    writer = MemoryWriter()
    broker = MemoryBroker(bus, "patients")
    pipe = Pipeline("score", "cancer", dataplane, writer=writer)
    worker = StreamWorker(pipe, broker, dead_letter_subject="dlq", fetch_timeout=0.05)
    stats = await worker.run(burst=True)
    assert stats.processed == 4 and bus.messages("dlq") == []
    last = pytest.approx(writer.rows["p2"]["probabilities"])
    assert writer.rows["p1"]["probabilities"] == last  # the later message wins
    assert await broker.lag() == 0


class PickyWriter(MemoryWriter):
    """Refuses (like a CHECK constraint) any frame holding a key in `refused`."""

    def __init__(self, refused: set[str]) -> None:
        super().__init__()
        self.refused = refused

    async def write(self, frame: Frame) -> None:
        bad = self.refused & set(frame.keys)  # type: ignore[operator]
        if bad:
            raise ModelportError(f"value out of range for {sorted(bad)[0]}")
        await super().write(frame)


async def test_messages_the_sink_refuses_are_dead_lettered_and_the_rest_written(dataplane
                                                                                ) -> None:
    bus = MemoryBus()
    publish_patients(bus, 40)
    writer = PickyWriter({"p7", "p30"})
    broker = MemoryBroker(bus, "patients")
    pipe = Pipeline("score", "cancer", dataplane, writer=writer)
    worker = StreamWorker(pipe, broker, dead_letter_subject="dlq", batch_size=40,
                          fetch_timeout=0.05)
    stats = await worker.run(burst=True)
    assert set(writer.rows) == {f"p{i}" for i in range(40)} - {"p7", "p30"}
    dead = sorted(orjson.loads(m)["reason"] for m in bus.messages("dlq"))
    assert dead == ["value out of range for p30", "value out of range for p7"]
    assert stats.processed == 38 and await broker.lag() == 0


async def test_a_sink_refusing_every_message_stops_the_worker_unacked(
        dataplane, caplog: pytest.LogCaptureFixture) -> None:
    bus = MemoryBus()
    publish_patients(bus, 8)
    broker = MemoryBroker(bus, "patients")
    pipe = Pipeline("score", "cancer", dataplane,
                    writer=PickyWriter({f"p{i}" for i in range(8)}))
    worker = StreamWorker(pipe, broker, dead_letter_subject="dlq", fetch_timeout=0.05)
    with pytest.raises(ModelportError, match="value out of range"):
        await worker.run(burst=True)
    assert bus.messages("dlq") == [] and await broker.lag() == 8  # they come back
    assert not [r for r in caplog.records if "dead-letter" in r.getMessage()]


class MissingColumnWriter(MemoryWriter):
    """A table without a column that only some messages fill: the table is wrong."""

    async def write(self, frame: Frame) -> None:
        if "p3" in frame.keys:
            raise ConfigError("table 'scores' has no column(s) key")
        await super().write(frame)


async def test_a_configuration_error_stops_the_worker_rather_than_dead_lettering(
        dataplane, caplog: pytest.LogCaptureFixture) -> None:
    bus = MemoryBus()
    publish_patients(bus, 8)
    broker = MemoryBroker(bus, "patients")
    pipe = Pipeline("score", "cancer", dataplane, writer=MissingColumnWriter())
    worker = StreamWorker(pipe, broker, dead_letter_subject="dlq", fetch_timeout=0.05)
    with pytest.raises(ConfigError, match="has no column"):
        await worker.run(burst=True)
    assert bus.messages("dlq") == [] and await broker.lag() == 8  # they come back
    assert not [r for r in caplog.records if "dead-letter" in r.getMessage()]


async def test_dead_letters_are_logged_once_written(dataplane,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    bus = MemoryBus()
    publish_patients(bus, 5)
    bus.append("patients", b"{not json")
    pipe = Pipeline("score", "cancer", dataplane, writer=MemoryWriter())
    worker = StreamWorker(pipe, MemoryBroker(bus, "patients"), dead_letter_subject="dlq",
                          batch_size=16, fetch_timeout=0.05)
    await worker.run(burst=True)
    [line] = [r.getMessage() for r in caplog.records if "dead-letter" in r.getMessage()]
    assert line.startswith("dead-lettered 1 of 6 messages to dlq (")
    assert "not valid json" in line and len(bus.messages("dlq")) == 1


async def test_binary_payloads_are_dead_lettered_byte_for_byte(dataplane) -> None:
    bus = MemoryBus()
    bus.append("patients", b"\xff\x00\x93")
    pipe = Pipeline("score", "cancer", dataplane, writer=MemoryWriter())
    worker = StreamWorker(pipe, MemoryBroker(bus, "patients"), dead_letter_subject="dlq",
                          fetch_timeout=0.05, codec="msgpack")
    await worker.run(burst=True)
    [dead] = [orjson.loads(m) for m in bus.messages("dlq")]
    assert base64.b64decode(dead["payload_base64"]) == b"\xff\x00\x93"


class SlowWriter(MemoryWriter):
    """Holds the first frame until the next batch has been scored (so that batch finds
    it still being written), and the second until the write of a third has begun (two
    side by side), whatever the machine's speed; notes how many it held at once."""

    def __init__(self, rows_scored: Callable[[], float]) -> None:
        super().__init__()
        self.active = self.peak = self.begun = 0
        self.rows_scored = rows_scored
        self.third = asyncio.Event()

    async def write(self, frame: Frame) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.begun += 1
        if self.begun == 1:
            await until(lambda: self.rows_scored() >= 16, what="the second batch scored")
        elif self.begun == 2:
            await asyncio.wait_for(self.third.wait(), 60)
        elif self.begun == 3:
            self.third.set()
        await super().write(frame)
        self.active -= 1


async def test_batches_are_written_side_by_side_and_the_last_message_about_an_id_wins(
        dataplane) -> None:
    bus = MemoryBus()
    records = publish_patients(bus, 8)  # batch 1: p0 … p7, written slowly
    X, _ = cancer()
    later = X[100:101].to_dict(orient="records")[0]  # type: ignore[index]
    bus.append("patients", orjson.dumps({"id": "p3", "data": later}))  # batch 2: p3 again
    bus.append("patients", orjson.dumps({"id": "twin", "data": later}))
    for i in range(8, 30):  # batches 3 and 4: other ids, written beside the others
        bus.append("patients", orjson.dumps({"id": f"q{i}", "data": records[i % 8]}))
    def batch_rows() -> float:  # the rows the model has been given
        return dataplane.metrics.registry.get_sample_value(
            "modelport_batch_size_sum", {"model": "cancer", "version": "1"})

    # the smoke test's sample, counted once its batch is (a lane counts it after answering)
    await until(lambda: batch_rows() is not None, what="the smoke test's batch counted")
    before = batch_rows()
    writer = SlowWriter(lambda: batch_rows() - before)
    broker = MemoryBroker(bus, "patients")
    worker = StreamWorker(Pipeline("score", "cancer", dataplane, writer=writer), broker,
                          dead_letter_subject="dlq", batch_size=8, fetch_timeout=0.05)
    stats = await worker.run(burst=True)
    assert stats.processed == 32 and await broker.lag() == 0
    assert writer.peak >= 2  # side by side
    # batch 2 waited for batch 1 (which held p3) although it could have gone beside it
    assert writer.rows["p3"]["probabilities"] == writer.rows["twin"]["probabilities"]
    assert len(writer.rows) == 8 + 1 + 22
