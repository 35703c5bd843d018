"""Pipelines without a model: data moved from a trigger to a writer, as it is."""

from __future__ import annotations

import orjson

from modelport import Registry, Settings
from modelport.dataplane import DataPlane
from modelport.pipeline import Frame, MemoryWriter, Pipeline
from modelport.streams.memory import MemoryBroker, MemoryBus
from modelport.streams.worker import StreamWorker


def upper_track(frame: Frame) -> Frame:
    frame.columns["track"] = [str(t).upper() for t in frame.columns["track"]]
    return frame


async def test_score_and_write_hand_the_frame_to_the_writer(settings: Settings) -> None:
    dp = DataPlane(Registry(settings=settings), settings, [])
    writer = MemoryWriter()
    pipe = Pipeline("fold", None, dp, writer=writer, pre=upper_track)
    scored = await pipe.score(Frame(["m1", "m2"], {"user": ["u1", "u2"], "track": ["a", "b"]}))
    await pipe.write(scored)
    assert scored.rejects == []
    assert writer.rows == {"m1": {"user": "u1", "track": "A"},
                           "m2": {"user": "u2", "track": "B"}}


async def test_stream_worker_moves_records_and_dead_letters_rows(settings: Settings) -> None:
    dp = DataPlane(Registry(settings=settings), settings, [])
    bus = MemoryBus()
    for i in range(5):
        bus.append("listens", orjson.dumps({"id": f"l{i}", "data": {"user": "u", "track": i}}))
    bus.append("listens", orjson.dumps(["u", 7]))  # a row: no signature names its values
    writer = MemoryWriter()
    worker = StreamWorker(Pipeline("fold", None, dp, writer=writer),
                          MemoryBroker(bus, "listens"), dead_letter_subject="listens.dlq",
                          fetch_timeout=0.05)
    stats = await worker.run(burst=True)
    assert stats.processed == 5 and stats.dead_lettered == 1
    assert writer.rows["l3"] == {"user": "u", "track": 3}
    letter = orjson.loads(bus.messages("listens.dlq")[0])
    assert "expected a record" in letter["reason"]
