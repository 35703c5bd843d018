"""`modelport feedback load` and `quality`, in-process (`cli.run`, as the entry point):
files of every kind stored as labels, a bad line named with nothing stored, and the
metrics read back. (docs/feedback.md runs the whole flow with a batch job.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from modelport import Settings, cli
from modelport.monitoring.feedback import FeedbackStore, feedback
from modelport.monitoring.logstore import LogStore
from modelport.monitoring.predlog import PredictionLog
from modelport.settings import MonitoringSettings


def run(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str
        ) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.run(list(args), settings)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def labels(settings: Settings) -> dict[tuple[str, str, int], object]:
    engine = sa.create_engine(settings.resolved_log_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(feedback.c.scope, feedback.c.ident,
                                      feedback.c.row_index, feedback.c.label))
        found = {(s, i, r): label for s, i, r, label in rows}
    engine.dispose()
    return found


async def test_load_reads_csv_jsonl_and_json_and_the_last_label_wins(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plog = PredictionLog(LogStore(settings.resolved_log_url),
                         MonitoringSettings(sample_rate=1.0, seed=0))
    await plog.start()
    plog.record("m", 1, "pipeline:recs", {"user": np.asarray([7, 8])},
                {"items": np.asarray([["a", "b"], ["c", "d"]], dtype=object)}, 1.0,
                keys=[7, 8])
    await plog.stop()
    csv = tmp_path / "labels.csv"
    csv.write_text('pipeline,key,label\nrecs,7,"[""b"", ""x""]"\nrecs,8,c\nrecs,99,d\n')
    code, out, err = run(settings, capsys, "feedback", "load", str(csv))
    assert code == 0, err
    assert json.loads(out) == {"stored": 3, "matched": 2, "unmatched": 1,
                               "unmatched_examples": ["pipeline:recs key '99'"]}
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text('{"request_id": "r1", "row": 2, "label": 0.5}\n\n'
                     '{"pipeline": "recs", "key": 8, "label": ["c"]}\n'
                     '{"pipeline": "recs", "key": "8", "label": ["d"]}\n')
    assert run(settings, capsys, "feedback", "load", str(jsonl))[0] == 0
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps({"feedback": [{"request_id": "r2", "label": "spam"}]}))
    assert run(settings, capsys, "feedback", "load", str(listed))[0] == 0
    assert labels(settings) == {
        ("pipeline:recs", "7", 0): ["b", "x"],   # a JSON cell is JSON
        ("pipeline:recs", "8", 0): ["d"],        # 8 and "8": one key, the last label
        ("pipeline:recs", "99", 0): "d",
        ("request", "r1", 2): 0.5,
        ("request", "r2", 0): "spam",
    }
    code, out, err = run(settings, capsys, "feedback", "quality", "m", "--version", "1",
                         "--metric", "recall@2", "--metric", "ndcg@1")
    assert code == 0, err
    # key 7: b of {b, x} at rank 2 of [a, b]; key 8: d, its last label, at rank 2 of [c, d]
    assert [(q["metric"], q["value"], q["rows"]) for q in json.loads(out)] == [
        ("recall@2", pytest.approx((0.5 + 1.0) / 2), 2), ("ndcg@1", 0.0, 2)]


@pytest.mark.parametrize(("name", "text", "words"), [
    ("labels.csv", "request_id,row,label\nr1,0,1\nr2,two,1\n",
     ["labels.csv:3.row must be an integer"]),
    ("labels.jsonl", '{"request_id": "r1", "label": 1}\n{"request_id": "r2"}\n',
     ["labels.jsonl:2.label is required"]),
    ("labels.jsonl", '{"request_id": "r1", "label": 1}\n{oops\n',
     ["labels.jsonl:2: not valid JSON"]),
    ("labels.json", '{"request_id": "r1", "label": 1}', ["expected a list of labels"]),
    ("labels.txt", "r1 1\n", ["a labels file is .csv, .jsonl, .ndjson or .json"]),
    ("labels.csv", "request_id,label\n", ["labels.csv holds no labels"]),
])
def test_a_bad_file_is_one_line_naming_where_and_nothing_is_stored(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        name: str, text: str, words: list[str]) -> None:
    path = tmp_path / name
    path.write_text(text)
    code, _, err = run(settings, capsys, "feedback", "load", str(path))
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    for word in words:
        assert word in err
    store = FeedbackStore.open(settings.resolved_log_url)
    try:
        assert store.count() == 0
    finally:
        store.close()
