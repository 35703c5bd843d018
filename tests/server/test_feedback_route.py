"""`POST /feedback` on a real app: labels by the request id the server answered with,
unmatched ids counted, bad bodies refused naming the field, and the live-quality gauge
in `/metrics` computed from the database."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from starlette.testclient import TestClient

from modelport import Registry, Service, ServiceConfig, Settings
from modelport.dataplane import ModelConfig
from modelport.server import create_app
from modelport.settings import MonitoringSettings
from waiting import wait_for


@pytest.fixture
def served(settings: Settings) -> Settings:
    return settings.model_copy(update={"monitoring": MonitoringSettings(
        sample_rate=1.0, seed=0, flush_interval_s=0.05, quality_interval_s=0.05)})


def gauge(text: str, metric: str) -> float | None:
    pattern = ('modelport_live_quality{metric="' + metric + '",model="clf",version="1"} ')
    found = re.search(re.escape(pattern) + r"(\S+)", text)
    return float(found[1]) if found else None


def test_feedback_by_request_id_becomes_live_accuracy_in_metrics(served: Settings) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = (X[:, 0] + rng.normal(scale=0.7, size=300) > 0).astype(int)
    with Registry(settings=served) as reg:
        reg.register("clf", LogisticRegression().fit(X[:100], y[:100]), sample_input=X[:5])
        service = Service(served, ServiceConfig(models=[ModelConfig(ref="clf:1")]), reg,
                          follow=False)
        with TestClient(create_app(service)) as client:
            predicted = {}
            for i in range(100, 160):
                r = client.post("/models/clf/predict", json={"instances": [X[i].tolist()]},
                                headers={"X-Request-ID": f"order-{i}"})
                assert r.status_code == 200, r.text
                predicted[i] = r.json()["predictions"][0]
            plog = service.prediction_log
            assert plog is not None
            wait_for(lambda: plog.written == 60, what="the predictions in the log")

            # one label, then the rest in bulk with an id the server never answered
            one = client.post("/feedback", json={"request_id": "order-100",
                                                 "label": int(y[100])})
            assert one.status_code == 200, one.text
            assert one.json() == {"stored": 1, "matched": 1, "unmatched": 0,
                                  "unmatched_examples": []}
            bulk = client.post("/feedback", json={"feedback": [
                *({"request_id": f"order-{i}", "label": int(y[i])} for i in range(101, 140)),
                {"request_id": "typo-7", "label": 1}]})
            assert bulk.status_code == 200, bulk.text
            assert bulk.json() == {"stored": 40, "matched": 39, "unmatched": 1,
                                   "unmatched_examples": ["request 'typo-7' row 0"]}

            labelled = list(range(100, 140))
            expected = accuracy_score(y[labelled], [predicted[i] for i in labelled])
            wait_for(lambda: gauge(client.get("/metrics").text, "accuracy") == pytest.approx(
                expected), what="the live accuracy gauge")
            assert gauge(client.get("/metrics").text, "auc") is not None
            assert 'modelport_feedback_joined_rows{model="clf",version="1"} 40.0' in \
                client.get("/metrics").text


@pytest.mark.parametrize(("body", "field"), [
    (b'{"request_id": "r"}', "body.label is required"),
    (b'[{"request_id": "r", "label": 1}, {"request_id": "r", "row": "2", "label": 1}]',
     "feedback[1].row must be an integer"),
    (b'{"feedback": [{"pipeline": "p", "label": 1}]}', "feedback[0].key is required"),
    (b"{not json", "request body is not valid JSON"),
])
def test_bad_feedback_is_a_400_naming_the_field(served: Settings, body: bytes,
                                                field: str) -> None:
    with Registry(settings=served) as reg:
        service = Service(served, ServiceConfig(), reg, follow=False)
        with TestClient(create_app(service)) as client:
            r = client.post("/feedback", content=body,
                            headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert field in r.json()["error"]


def test_feedback_without_the_prediction_log_says_why(settings: Settings) -> None:
    off = settings.model_copy(update={"monitoring": MonitoringSettings(enabled=False)})
    with Registry(settings=off) as reg:
        service = Service(off, ServiceConfig(), reg, follow=False)
        with TestClient(create_app(service)) as client:
            r = client.post("/feedback", json={"request_id": "r", "label": 1})
    assert r.status_code == 409
    assert "monitoring is off" in r.json()["error"]
