"""Feedback joined with the prediction log: live quality equals scikit-learn's on the
joined rows, on SQLite and on the real PostgreSQL; unknown ids are counted; the last
label wins; an older log table is brought up to date."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    mean_absolute_error,
    mean_squared_error,
    roc_auc_score,
)

from modelport import Registry, Settings
from modelport.errors import InvalidInput
from modelport.jobs.report import build_report
from modelport.jobs.report_html import render_html
from modelport.monitoring.feedback import FeedbackStore, Label, parse_body
from modelport.monitoring.logstore import LogStore
from modelport.monitoring.metrics import Metrics
from modelport.monitoring.predlog import PredictionLog
from modelport.monitoring.quality import QualityWatch, live_quality
from modelport.settings import MonitoringSettings

N = 10_000
WEEK = timedelta(days=7)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(url: str) -> Iterator[FeedbackStore]:
    fb = FeedbackStore.open(url)
    yield fb
    fb.close()


async def log_calls(url: str, calls: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                                str | None, list[object] | None, str]]) -> None:
    """Record model calls through the real prediction log (every row kept) and flush."""
    plog = PredictionLog(LogStore(url), MonitoringSettings(sample_rate=1.0, seed=0,
                                                           max_rows_per_call=10_000,
                                                           buffer_size=100_000))
    await plog.start()
    for inputs, outputs, rid, keys, source in calls:
        plog.record("m", 1, source, inputs, outputs, 1.0, rid, keys=keys)
    await plog.stop()


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    noisy = X[:, 0] + X[:, 1] * 0.5 + rng.normal(scale=0.8, size=n)
    return X, noisy


async def test_classifier_accuracy_and_auc_equal_sklearns_on_the_joined_rows(
        url: str, store: FeedbackStore) -> None:
    X, noisy = data(N)
    y = (noisy > 0).astype(int)
    clf = LogisticRegression().fit(X[:2000], y[:2000])
    pred, proba = clf.predict(X), clf.predict_proba(X)
    # one request per row, as HTTP callers send them
    await log_calls(url, [({"x": X[i:i + 1]}, {"predictions": pred[i:i + 1],
                                               "probabilities": proba[i:i + 1]},
                           f"req-{i}", None, "predict") for i in range(N)])
    labelled = np.random.default_rng(1).choice(N, N // 2, replace=False)
    # the labels arrive later, in two deliveries, with two ids the log never saw
    first, second = labelled[:3000], labelled[3000:]
    r1 = store.submit([Label("request", f"req-{i}", 0, int(y[i])) for i in first])
    r2 = store.submit([*(Label("request", f"req-{i}", 0, int(y[i])) for i in second),
                       Label("request", "nope-1", 0, 1), Label("request", "nope-2", 0, 0)])
    assert (r1.stored, r1.matched, r1.unmatched) == (3000, 3000, 0)
    assert (r2.stored, r2.matched, r2.unmatched) == (2002, 2000, 2)
    assert r2.unmatched_examples == ["request 'nope-1' row 0", "request 'nope-2' row 0"]

    acc = live_quality("m", 1, "accuracy", WEEK, log=store)
    auc = live_quality("m", 1, "auc", WEEK, log=store)
    assert acc.rows == auc.rows == N // 2
    assert acc.value == pytest.approx(accuracy_score(y[labelled], pred[labelled]), abs=1e-12)
    assert auc.value == pytest.approx(roc_auc_score(y[labelled], proba[labelled, 1]),
                                      abs=1e-12)
    assert 0.6 < auc.value < 1  # type: ignore[operator]  # a real model, not a constant
    # another version, or a window after the predictions, has nothing to judge
    assert live_quality("m", 2, "accuracy", WEEK, log=store).value is None
    later = datetime.now(UTC) + timedelta(hours=1)
    assert live_quality("m", 1, "accuracy", later, log=store).rows == 0


async def test_regressor_mae_and_rmse_by_pipeline_key_equal_sklearns(
        url: str, store: FeedbackStore) -> None:
    X, target = data(N, seed=2)
    reg = LinearRegression().fit(X[:2000], target[:2000])
    pred = reg.predict(X)
    keys: list[object] = list(range(N))
    # a batch job: chunks of 1,000 keyed rows, logged as pipeline:scores
    await log_calls(url, [({"x": X[s:s + 1000]}, {"predictions": pred[s:s + 1000]}, None,
                           keys[s:s + 1000], "pipeline:scores") for s in range(0, N, 1000)])
    labelled = np.random.default_rng(3).choice(N, N // 2, replace=False)
    body = {"feedback": [{"pipeline": "scores", "key": int(i), "label": float(target[i])}
                         for i in labelled]}
    receipt = store.submit(parse_body(body))
    assert (receipt.matched, receipt.unmatched) == (N // 2, 0)
    # the same keys under another pipeline's name are not these predictions
    other = store.submit(parse_body([{"pipeline": "other", "key": 1, "label": 0.0}]))
    assert other.unmatched == 1

    mae = live_quality("m", 1, "mae", WEEK, log=store)
    rmse = live_quality("m", 1, "rmse", WEEK, log=store)
    assert mae.rows == rmse.rows == N // 2
    assert mae.value == pytest.approx(
        mean_absolute_error(target[labelled], pred[labelled]), rel=1e-12)
    assert rmse.value == pytest.approx(
        np.sqrt(mean_squared_error(target[labelled], pred[labelled])), rel=1e-12)


async def test_the_last_label_for_a_prediction_wins(url: str, store: FeedbackStore) -> None:
    await log_calls(url, [({"x": np.zeros((2, 1))}, {"predictions": np.asarray([1, 0])},
                           "r", None, "predict")])
    # both rows of request r judged wrong, then row 1 corrected: one right of two
    store.submit([Label("request", "r", 0, 0), Label("request", "r", 1, 1)])
    assert live_quality("m", 1, "accuracy", WEEK, log=store).value == 0.0
    store.submit([Label("request", "r", 1, 0)])
    assert live_quality("m", 1, "accuracy", WEEK, log=store).value == 0.5
    # within one delivery too, the later item wins
    receipt = store.submit(parse_body([{"request_id": "r", "label": 0},
                                       {"request_id": "r", "label": 1}]))
    assert receipt.stored == 1
    q = live_quality("m", 1, "accuracy", WEEK, log=store)
    assert (q.value, q.rows) == (1.0, 2)
    assert store.count() == 2


async def test_multiclass_auc_is_one_vs_rest_macro_as_sklearns(
        url: str, store: FeedbackStore) -> None:
    X, noisy = data(3000, seed=4)
    y = np.digitize(noisy, [-0.5, 0.5])  # three classes
    clf = LogisticRegression().fit(X[:1000], y[:1000])
    pred, proba = clf.predict(X), clf.predict_proba(X)
    await log_calls(url, [({"x": X}, {"predictions": pred, "probabilities": proba},
                           "big", None, "predict")])
    store.submit([Label("request", "big", i, int(y[i])) for i in range(3000)])
    auc = live_quality("m", 1, "auc", WEEK, log=store)
    assert auc.value == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"), abs=1e-12)


async def test_ranker_recall_and_ndcg_at_k(url: str, store: FeedbackStore) -> None:
    ranked = np.asarray([["a", "b", "c"], ["d", "e", "f"]], dtype=object)
    await log_calls(url, [({"user": np.asarray([1, 2])}, {"items": ranked}, None, [1, 2],
                           "pipeline:recs")])
    store.submit(parse_body([{"pipeline": "recs", "key": 1, "label": ["b", "z"]},
                             {"pipeline": "recs", "key": 2, "label": ["d"]}]))
    recall = live_quality("m", 1, "recall@3", WEEK, log=store)
    ndcg = live_quality("m", 1, "ndcg@3", WEEK, log=store)
    # row 1: b of {b, z} at rank 2; row 2: d of {d} at rank 1
    assert recall.value == pytest.approx((0.5 + 1.0) / 2)
    ideal = 1 + 1 / np.log2(3)
    assert ndcg.value == pytest.approx(((1 / np.log2(3)) / ideal + 1.0) / 2)
    assert live_quality("m", 1, "recall@1", WEEK, log=store).value == pytest.approx(0.5)


def test_an_older_log_table_gets_the_feedback_columns(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # mp_predictions as an earlier modelport made it
        conn.execute(sa.text(
            "CREATE TABLE mp_predictions (id INTEGER PRIMARY KEY, ts TIMESTAMP NOT NULL, "
            "model VARCHAR(128) NOT NULL, version INTEGER NOT NULL, source VARCHAR(128) NOT "
            "NULL, latency_ms FLOAT NOT NULL, inputs JSON NOT NULL, outputs JSON NOT NULL, "
            "request_id VARCHAR(128))"))
    store = FeedbackStore.open(url)
    try:
        receipt = store.submit([Label("request", "old", 0, 1)])
        assert receipt.unmatched == 1
        columns = {c["name"] for c in sa.inspect(engine).get_columns("mp_predictions")}
        assert {"row_index", "row_key"} <= columns
    finally:
        store.close()
        engine.dispose()


@pytest.mark.parametrize(("body", "message"), [
    ({"request_id": "r"}, "body.label is required"),
    ([{"request_id": "r", "label": 1}, {"request_id": 5, "label": 1}],
     "feedback[1].request_id must be a non-empty string"),
    ({"feedback": [{"request_id": "r", "row": -1, "label": 1}]},
     "feedback[0].row must be an integer >= 0"),
    ({"feedback": [{"pipeline": "p", "label": 1}]}, "feedback[0].key is required"),
    ({"feedback": [{"key": 3, "label": 1}]}, "feedback[0].pipeline is required"),
    ({"feedback": [{"label": 1}]}, "feedback[0]: name the prediction"),
    ({"feedback": [{"request_id": "r", "lable": 1}]}, "unknown field(s) 'lable'"),
    ({"feedback": []}, "feedback is empty"),
    ({"feedback": {"request_id": "r"}}, "'feedback' must be a list"),
    ({"request_id": "r", "label": {"a": 1}}, "body.label must be a class"),
    ({"request_id": "r", "key": 1, "label": 1}, "either request_id"),
    ("text", "body: expected an object"),
])
def test_bad_feedback_names_the_field(body: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_body(body)


def test_an_unknown_metric_is_refused(tmp_path: Path) -> None:
    store = FeedbackStore.open(f"sqlite:///{tmp_path / 'log.db'}")
    try:
        with pytest.raises(InvalidInput, match="unknown live metric 'f1'"):
            live_quality("m", 1, "f1", WEEK, log=store)
    finally:
        store.close()


async def test_the_report_shows_live_quality_per_served_version(settings: Settings) -> None:
    X, noisy = data(400, seed=5)
    y = (noisy > 0).astype(int)
    clf = LogisticRegression().fit(X[:200], y[:200])
    pred = clf.predict(X)
    url = settings.resolved_log_url
    with Registry(settings=settings) as reg:
        reg.register("m", clf, sample_input=X[:5])
        await log_calls(url, [({"x": X[200:]}, {"predictions": pred[200:],
                                                "probabilities": clf.predict_proba(X[200:])},
                               "batch-1", None, "predict")])
        store = FeedbackStore.open(url)
        store.submit([Label("request", "batch-1", i, int(y[200 + i])) for i in range(100)])
        now = datetime.now(UTC)
        report = build_report(store.log, reg, now - timedelta(hours=1), now)
        store.close()
    summary = report.summary()
    accuracy = accuracy_score(y[200:300], pred[200:300])
    assert summary["models"][0]["quality"][0] == {
        "version": 1, "metric": "accuracy", "value": round(accuracy, 4), "labelled": 100}
    assert f"accuracy {round(accuracy, 4):g} on 100 labelled (version 1)" in summary["text"]
    assert "Live quality on feedback" in render_html(report)


async def test_the_gauges_follow_the_served_versions(settings: Settings) -> None:
    X, noisy = data(200, seed=6)
    y = (noisy > 0).astype(int)
    clf = LogisticRegression().fit(X, y)
    url = settings.resolved_log_url
    with Registry(settings=settings) as reg:
        record = reg.register("m", clf, sample_input=X[:5])
    await log_calls(url, [({"x": X}, {"predictions": clf.predict(X),
                                      "probabilities": clf.predict_proba(X)},
                           "all", None, "predict")])
    store = FeedbackStore.open(url)
    store.submit([Label("request", "all", i, int(y[i])) for i in range(50)])
    served = [record]
    metrics = Metrics()
    watch = QualityWatch(store, metrics, lambda: served, interval_s=3600, window_s=3600)
    await watch.refresh()
    value = metrics.registry.get_sample_value
    accuracy = {"model": "m", "version": "1", "metric": "accuracy"}
    assert value("modelport_live_quality", accuracy) == pytest.approx(
        accuracy_score(y[:50], clf.predict(X[:50])))
    assert value("modelport_feedback_joined_rows", {"model": "m", "version": "1"}) == 50
    served.clear()  # the alias moved away: version 1 is no longer reported as live
    await watch.refresh()
    assert value("modelport_live_quality", accuracy) is None
    assert value("modelport_feedback_joined_rows", {"model": "m", "version": "1"}) is None
    await watch.stop()
    store.close()


async def test_a_guard_can_bound_live_quality_since_the_promotion(
        url: str, store: FeedbackStore) -> None:
    from modelport.promotion import METRICS, LiveWindow
    from modelport.promotion.bounds import parse_guard

    since = datetime.now(UTC) - timedelta(minutes=1)
    y = np.array([0, 1] * 20)
    pred = y.copy()
    pred[:10] = 1 - pred[:10]  # a quarter wrong
    await log_calls(url, [({"x": np.ones((1, 3))}, {"predictions": pred[i:i + 1]},
                           f"r-{i}", None, "predict") for i in range(len(y))])
    log = LogStore(url)
    window = LiveWindow(log, "m", 1, since)
    assert METRICS["accuracy"].read(window) is None  # no label yet: nothing to judge
    store.submit([Label("request", f"r-{i}", 0, int(y[i])) for i in range(len(y))])
    assert METRICS["accuracy"].read(window) == pytest.approx(0.75)
    (bound,) = parse_guard("accuracy>90%", set(METRICS))
    assert not bound.holds(0.75)
    log.close()
