"""Live drift: computed from the prediction log on the real PostgreSQL and exported as
gauges; a shifted feature is flagged, an unshifted list of ids (the recommender's
history) is not, and a score from too few rows is never headlined."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from modelport import Registry, Service, ServiceConfig, Settings
from modelport.dataplane import ModelConfig
from modelport.jobs.report import build_report
from modelport.jobs.report_html import render_html
from modelport.model import ModelVersion
from modelport.monitoring.drift import MIN_ROWS, SHIFT_JS, drift
from modelport.monitoring.livedrift import DriftWatch
from modelport.monitoring.logstore import LogStore
from modelport.monitoring.metrics import Metrics
from modelport.monitoring.predlog import PredictionLog
from modelport.profile import _profile_one, profile, psi
from modelport.settings import MonitoringSettings
from modelport.signature import infer_signature
from waiting import until

pytestmark = pytest.mark.postgres
WIDTH, CATALOG = 50, 5000


def gauge(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a Prometheus text exposition, or None."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def histories(rng: np.random.Generator, n: int) -> np.ndarray:
    """Users' last listens: ids drawn by popularity (Zipf over a catalog of 5,000),
    5 to 50 of them, padded with "" as the music example's pre step does."""
    p = 1 / np.arange(1, CATALOG + 1)
    p /= p.sum()
    out = np.full((n, WIDTH), "", dtype=object)
    for i in range(n):
        size = int(rng.integers(5, WIDTH + 1))
        out[i, :size] = [f"t{j}" for j in rng.choice(CATALOG, size, p=p)]
    return out


async def test_a_shifted_numeric_feature_raises_its_gauge_and_is_flagged(
        settings: Settings, pg_url: str) -> None:
    rng = np.random.default_rng(3)
    train = pd.DataFrame({"moved": rng.normal(size=2000), "same": rng.normal(size=2000)})
    settings = settings.model_copy(update={"registry_url": pg_url, "monitoring":
                                           MonitoringSettings(sample_rate=1.0, seed=0,
                                                              drift_interval_s=0)})
    with Registry(settings=settings) as reg:
        reg.register("m", LinearRegression().fit(train, train["moved"]),
                     sample_input=train[:5], reference_data=train)
        async with Service(settings, ServiceConfig(models=[ModelConfig(ref="m:1")]), reg,
                           follow=False) as service:
            plane, plog = service.dataplane, service.prediction_log
            assert plane.drift_watch is not None and plog is not None
            deployment = plane.deployment("m")
            live = pd.DataFrame({"moved": rng.normal(2.0, size=400),
                                 "same": rng.normal(size=400)})
            for chunk in range(0, 400, 50):  # calls as a server sees them
                await plane.predict(deployment, deployment.model.signature.decode(
                    live[chunk:chunk + 50]), source="predict")
            await plog.flush()
            plane.drift_watch.clock = lambda: time.time() + 60  # this minute is complete
            (window,) = await plane.drift_watch.refresh()
            text = service.metrics.render().decode()
    assert window.rows == 400
    assert [f.name for f in window.flagged] == ["moved"]
    moved = gauge(text, "modelport_drift_score", model="m", version="1", feature="moved")
    same = gauge(text, "modelport_drift_score", model="m", version="1", feature="same")
    assert moved is not None and moved > 0.25, text
    assert same is not None and same < 0.1
    assert gauge(text, "modelport_drift_level", model="m", feature="moved") == 2
    assert gauge(text, "modelport_drift_level", model="m", feature="same") == 0
    assert gauge(text, "modelport_drift_rows", model="m", version="1") == 400


async def test_an_unshifted_id_history_is_not_flagged_but_a_shifted_one_is(
        pg_url: str) -> None:
    rng = np.random.default_rng(7)
    reference = histories(rng, 2000)
    signature = infer_signature({"history": reference[:2]})
    record = ModelVersion.model_construct(
        name="recommender", version=1, profile=profile({"history": reference}, signature))
    assert record.profile["features"]["history"]["kind"] == "set"
    # 150 live rows from the same popularity: what the report once read as drift
    live = histories(rng, 150)
    per_position = [psi(_profile_one(reference[:, j]), live[:, j]) or 0.0
                    for j in range(WIDTH)]
    assert sum(p > 0.1 for p in per_position) > WIDTH / 2, "the old false alarm, reproduced"

    plog = PredictionLog(LogStore(pg_url), MonitoringSettings(sample_rate=1.0, seed=0,
                                                              max_rows_per_call=1000))
    await plog.start()
    plog.record("recommender", 1, "predict", {"history": live},
                {"items": np.zeros((150, 10))}, 1.0)
    await plog.stop()
    metrics = Metrics()
    store = LogStore(pg_url)
    watch = DriftWatch(store, metrics, lambda: [record])
    watch.clock = lambda: time.time() + 60
    # two replicas, computing 50 s apart within one interval, with a bound on rows read
    minute = (time.time() // 60 + 1) * 60
    bounded = MonitoringSettings(drift_max_rows=60)
    replicas = [DriftWatch(store, Metrics(), lambda: [record], bounded) for _ in range(2)]
    replicas[0].clock, replicas[1].clock = lambda: minute + 5, lambda: minute + 55
    try:
        (window,) = await watch.refresh()
        seen = [r.compute()[0] for r in replicas]
    finally:
        store.close()
    assert seen[0].rows == seen[1].rows <= 60
    assert [(f.name, f.score) for f in seen[0].features] == [
        (f.name, f.score) for f in seen[1].features], "every replica reads the same rows"
    assert window.rows == 150
    assert not window.flagged, [(f.name, f.score) for f in window.features]
    assert {f.name for f in window.features} == {"history (size)", "history (values)"}
    values = gauge(metrics.render().decode(), "modelport_drift_score",
                   feature="history (values)", method="js")
    assert values is not None and values < SHIFT_JS

    # a profile written before sets were profiled as such: positions are pooled
    legacy = {"features": {f"history[{j}]": _profile_one(reference[:, j])
                           for j in range(WIDTH)}}
    rows = [{"history": r} for r in live.tolist()]
    (pooled,) = drift(legacy, rows)
    assert pooled.name == "history (positions)" and not pooled.flagged

    # the same score does see a real change: popular and rare tracks swapped
    swapped = np.vectorize(lambda s: s and f"t{CATALOG - 1 - int(s[1:])}",
                           otypes=[object])(live)
    moved = {f.name: f for f in drift(record.profile, [{"history": r}
                                                        for r in swapped.tolist()])}
    assert moved["history (values)"].level == "drift"


async def test_a_psi_from_one_row_is_not_headlined(settings: Settings, pg_url: str,
                                                   tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    train = pd.DataFrame({"x": rng.normal(size=500)})
    settings = settings.model_copy(update={"registry_url": pg_url})
    with Registry(settings=settings) as reg:
        reg.register("m", LinearRegression().fit(train, train["x"]),
                     sample_input=train[:5], reference_data=train)
        plog = PredictionLog(LogStore(pg_url), MonitoringSettings(sample_rate=1.0))
        await plog.start()
        plog.record("m", 1, "predict", {"x": np.asarray([40.0])}, {"y": np.zeros(1)}, 1.0)
        await plog.stop()
        store = LogStore(pg_url)
        now = datetime.now(UTC)
        try:
            report = build_report(store, reg, now - timedelta(hours=1),
                                  now + timedelta(minutes=1))
        finally:
            store.close()
    (m,) = report.models
    (feature,) = m.drift[0].features
    assert feature.psi is not None and feature.psi > 5, "one row far out: a huge PSI"
    assert feature.level == "few rows" and feature.headline is None
    summary = report.summary()
    assert summary["models"][0]["drift"]["max_psi"] is None
    assert summary["models"][0]["drift"]["few_rows"] is True
    assert f"drift not judged (1 sampled rows, fewer than {MIN_ROWS})" in summary["text"]
    html = render_html(report)
    kpi = re.search(r"<b>([^<]*)</b><span>largest PSI</span>", html)
    assert kpi is not None and kpi[1] == f"— (&lt; {MIN_ROWS} rows)"
    assert f"{feature.psi:.2f}" not in kpi[1]


async def test_the_watch_recomputes_by_itself_and_stops_cleanly(pg_url: str) -> None:
    rng = np.random.default_rng(9)
    train = pd.DataFrame({"x": rng.normal(size=1000)})
    signature = infer_signature(train[:2])
    record = ModelVersion.model_construct(
        name="m", version=2, profile=profile(signature.decode(train), signature))
    config = MonitoringSettings(sample_rate=1.0, seed=0, max_rows_per_call=1000,
                                drift_interval_s=0.2, drift_window_s=600)
    plog = PredictionLog(LogStore(pg_url), config)
    metrics = Metrics()
    await plog.start(metrics)
    watch = DriftWatch(plog.store, metrics, lambda: [record], config)
    await watch.start()
    try:
        plog.record("m", 2, "predict", {"x": rng.normal(5.0, size=200)}, {"y": np.zeros(200)},
                    1.0)
        await plog.flush()

        def flagged() -> bool:
            text = metrics.render().decode()
            return gauge(text, "modelport_drift_level", model="m", version="2") == 2

        await until(flagged, 30, "the watch's next computation to flag x")
    finally:
        await watch.stop()
        await plog.stop()
    assert watch.last[("m", 2)].rows == 200
