"""Both HTTP APIs compute only the outputs a request asks for: the JSON API's
`"outputs": [...]` and the v2 protocol's `outputs`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from starlette.testclient import TestClient

from modelport import Registry, Service, ServiceConfig, Settings
from modelport.dataplane import ModelConfig
from modelport.server import create_app


@pytest.fixture(scope="module")
def fitted() -> tuple[Any, Any]:
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return X, make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)


@pytest.fixture
def client(settings: Settings, fitted: tuple[Any, Any]) -> Iterator[TestClient]:
    X, model = fitted
    reg = Registry(settings=settings)
    reg.register("cancer", model, sample_input=X[:5])
    service = Service(settings, ServiceConfig(models=[ModelConfig(ref="cancer:1")]), reg)
    with TestClient(create_app(service)) as http:
        http.app.state.service.dataplane.deployment("cancer").model.flavor.model.steps[-1][1] \
            .predict_proba = _refused
        yield http
    reg.close()


def _refused(*_: Any) -> Any:
    raise AssertionError("predict_proba() was not asked for")


def test_the_json_api_answers_what_is_asked_by_name(client: TestClient,
                                                    fitted: tuple[Any, Any]) -> None:
    X, model = fitted
    rows = X.head(3).to_numpy().tolist()
    response = client.post("/models/cancer/predict",
                           json={"instances": rows, "outputs": ["predictions"]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": model.predict(X.head(3)).tolist(),
                               "model": "cancer", "version": 1}


def test_the_v2_protocol_computes_only_the_outputs_asked(client: TestClient,
                                                          fitted: tuple[Any, Any]) -> None:
    X, model = fitted
    data = X.head(2).to_numpy()
    response = client.post("/v2/models/cancer/infer", json={
        "inputs": [{"name": "x", "shape": list(data.shape), "datatype": "FP64",
                    "data": data.ravel().tolist()}],
        "outputs": [{"name": "predictions"}]})
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    assert out["name"] == "predictions"
    np.testing.assert_array_equal(out["data"], model.predict(X.head(2)))


@pytest.mark.parametrize(("outputs", "error"), [
    (["label"], "unknown output 'label'; this model returns ['predictions', 'probabilities']"),
    ("predictions", "\"outputs\" must be a non-empty list of output names"),
    ([3], "\"outputs\"[0] must be an output name (a string), got 3"),
])
def test_a_bad_outputs_list_is_a_400_naming_what_is_wrong(
        client: TestClient, fitted: tuple[Any, Any], outputs: Any, error: str) -> None:
    X, _ = fitted
    response = client.post("/models/cancer/predict", json={
        "instances": X.head(1).to_numpy().tolist(), "outputs": outputs})
    assert response.status_code == 400
    assert response.json()["error"] == error


def test_the_openapi_document_offers_the_outputs_to_ask_for(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/models/cancer/predict"]["post"]["requestBody"]
    outputs = body["content"]["application/json"]["schema"]["properties"]["outputs"]
    assert outputs["items"]["enum"] == ["predictions", "probabilities"]
