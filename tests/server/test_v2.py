"""Open Inference Protocol v2 over HTTP: in-process, and against the real `tritonclient`."""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import tritonclient.http as triton
import uvicorn
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from starlette.testclient import TestClient
from tritonclient.utils import InferenceServerException

from modelport import ModelConfig, Registry, Service, ServiceConfig, Settings
from modelport.server import create_app
from modelport.server import v2_codec as codec
from modelport.server.v2 import to_batch
from modelport.signature import FieldSpec, Signature

COLORS = ["red", "green", "blue", "grün"]


@dataclass
class Served:
    settings: Settings
    registry: Registry
    X: pd.DataFrame
    frame_model: Pipeline  # "cancer": registered with a DataFrame -> a "columns" signature
    array_model: Pipeline  # "cancer-array": with an array -> a "tensor" signature
    colors: pd.DataFrame
    colors_model: Pipeline  # "colors": a string column in, string labels out

    def app(self, *refs: str) -> Any:
        configs = [ModelConfig(ref=r) for r in refs or ("cancer", "cancer-array", "colors")]
        return create_app(Service(self.settings, ServiceConfig(models=configs), self.registry,
                                  follow=False))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = Settings(home=tmp_path_factory.mktemp("v2") / "home")
    registry = Registry(settings=settings)
    data = load_breast_cancer(as_frame=True)
    X, y = data.data, data.target.to_numpy()
    frame_model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    registry.register("cancer", frame_model, sample_input=X.iloc[:5])
    array_model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X.to_numpy(), y)
    registry.register("cancer-array", array_model, sample_input=X.to_numpy()[:5])
    rng = np.random.default_rng(0)
    colors = pd.DataFrame({"color": rng.choice(COLORS, 200), "size": rng.normal(size=200)})
    labels = np.where(colors["color"].isin(["red", "grün"]) ^ (colors["size"] > 1), "warm",
                      "cold")
    colors_model = make_pipeline(
        ColumnTransformer([("onehot", OneHotEncoder(handle_unknown="ignore"), ["color"])],
                          remainder="passthrough"),
        LogisticRegression(),
    ).fit(colors, labels)
    registry.register("colors", colors_model, sample_input=colors.iloc[:5])
    yield Served(settings, registry, X, frame_model, array_model, colors, colors_model)
    registry.close()


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    with TestClient(served.app()) as c:
        yield c


def tensor(name: str, arr: np.ndarray, datatype: str = "FP64", nested: bool = False
           ) -> dict[str, Any]:
    data = arr.tolist() if nested else arr.reshape(-1).tolist()
    return {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": data}


def outputs_of(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {o["name"]: np.array(o["data"]).reshape(o["shape"])
            for o in response.json()["outputs"]}


# --- health and metadata --------------------------------------------------------------


def test_server_metadata_and_health(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "modelport"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True


def test_model_metadata_puts_the_batch_dimension_first(client: TestClient,
                                                       served: Served) -> None:
    meta = client.get("/v2/models/cancer-array").json()
    assert meta == {
        "name": "cancer-array", "versions": ["1"], "platform": "modelport-sklearn",
        "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, 30]}],
        "outputs": [{"name": "predictions", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]}],
    }
    columns = client.get("/v2/models/cancer/versions/1").json()
    assert [i["name"] for i in columns["inputs"]] == list(served.X.columns)
    assert columns["inputs"][0] == {"name": "mean radius", "datatype": "FP64", "shape": [-1]}
    colors = client.get("/v2/models/colors").json()
    assert colors["inputs"][0] == {"name": "color", "datatype": "BYTES", "shape": [-1]}
    assert colors["outputs"][0]["datatype"] == "BYTES"


@pytest.mark.parametrize(("path", "status", "body"), [
    ("/v2/models/cancer/ready", 200, {"name": "cancer", "ready": True}),
    ("/v2/models/cancer/versions/1/ready", 200, {"name": "cancer", "ready": True}),
    ("/v2/models/cancer/versions/2/ready", 404,
     {"error": "model 'cancer' serves version 1, not 2"}),
    ("/v2/models/nope/ready", 404, {"error": "model 'nope' is not served here"}),
    ("/v2/models/nope", 404, {"error": "model 'nope' is not served here"}),
    ("/v2/models/cancer/versions/7", 404, {"error": "model 'cancer' serves version 1, not 7"}),
])
def test_model_readiness_and_unknown_models(client: TestClient, path: str, status: int,
                                            body: dict[str, Any]) -> None:
    response = client.get(path)
    assert (response.status_code, response.json()) == (status, body)


def test_a_model_that_is_not_loaded_is_not_ready(served: Served) -> None:
    with TestClient(served.app("cancer", "ghost@production")) as c:
        assert c.get("/v2/health/ready").status_code == 400
        response = c.get("/v2/models/ghost/ready")
        assert (response.status_code, response.json()) == (400, {
            "error": "model ghost is not ready: ghost@production: no model named 'ghost'",
            "name": "ghost", "ready": False})
        infer = c.post("/v2/models/ghost/infer", json={"inputs": []})
        assert infer.status_code == 503
        assert "not loaded" in infer.json()["error"]


def test_openapi_lists_the_v2_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    infer = paths["/v2/models/{name}/versions/{version}/infer"]["post"]
    assert infer["summary"].startswith("Inference")
    assert [p["name"] for p in infer["parameters"]] == ["name", "version"]
    assert {"/v2", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready",
            "/v2/models/{name}/infer"} <= set(paths)
    assert "/models/cancer/predict" in paths  # the per-model JSON API is still there


# --- inference in JSON ----------------------------------------------------------------


def test_infer_flat_or_nested_matches_sklearn(client: TestClient, served: Served) -> None:
    x = served.X.to_numpy()[:7]
    for nested in (False, True):
        response = client.post("/v2/models/cancer-array/infer", json={
            "id": "req-1", "inputs": [tensor("input", x, nested=nested)]})
        assert response.json()["model_name"] == "cancer-array"
        assert response.json()["model_version"] == "1"
        assert response.json()["id"] == "req-1"
        out = outputs_of(response)
        np.testing.assert_array_equal(out["predictions"], served.array_model.predict(x))
        np.testing.assert_allclose(out["probabilities"], served.array_model.predict_proba(x),
                                   rtol=1e-12)


def test_a_single_input_model_takes_any_tensor_name(client: TestClient,
                                                    served: Served) -> None:
    x = served.X.to_numpy()[:2]
    out = outputs_of(client.post("/v2/models/cancer-array/infer",
                                 json={"inputs": [tensor("features", x)]}))
    np.testing.assert_array_equal(out["predictions"], served.array_model.predict(x))


def test_columns_model_takes_a_tensor_per_column_or_one_to_split(client: TestClient,
                                                                 served: Served) -> None:
    frame = served.X.iloc[:5]
    expected = served.frame_model.predict_proba(frame)
    per_column = [tensor(c, frame[c].to_numpy()) for c in frame.columns]
    per_column_2d = [tensor(c, frame[[c]].to_numpy()) for c in frame.columns]
    split = [tensor("table", frame.to_numpy())]
    for inputs in (per_column, per_column_2d, split):
        out = outputs_of(client.post("/v2/models/cancer/infer", json={"inputs": inputs}))
        np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-12)
    # FP32 columns are read as the model's FP64
    fp32 = [tensor(c, frame[c].to_numpy(np.float32), "FP32") for c in frame.columns]
    out = outputs_of(client.post("/v2/models/cancer/infer", json={"inputs": fp32}))
    rounded = frame.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(out["probabilities"], served.frame_model.predict_proba(rounded))


def test_requested_outputs_filter_the_response(client: TestClient, served: Served) -> None:
    x = served.X.to_numpy()[:3]
    response = client.post("/v2/models/cancer-array/infer", json={
        "inputs": [tensor("input", x)], "outputs": [{"name": "probabilities"}]})
    assert [o["name"] for o in response.json()["outputs"]] == ["probabilities"]
    assert "id" not in response.json()


def test_bytes_columns_in_json(client: TestClient, served: Served) -> None:
    frame = served.colors.iloc[:6]
    response = client.post("/v2/models/colors/infer", json={"inputs": [
        {"name": "color", "shape": [6], "datatype": "BYTES", "data": frame["color"].tolist()},
        tensor("size", frame["size"].to_numpy()),
    ]})
    out = response.json()["outputs"][0]
    assert (out["name"], out["datatype"], out["shape"]) == ("predictions", "BYTES", [6])
    assert out["data"] == served.colors_model.predict(frame).tolist()


@pytest.mark.parametrize(("inputs", "message"), [
    ([{"name": "input", "shape": [2, 30], "datatype": "FP64", "data": [1.0] * 59}],
     "input 'input': shape [2, 30] holds 60 values, data has 59"),
    ([{"name": "input", "shape": [2, 29], "datatype": "FP64", "data": [1.0] * 58}],
     "input 'input': expected shape [N, 30], got [2, 29]"),
    ([{"name": "input", "shape": [1, 30], "datatype": "BYTES", "data": ["a"] * 30}],
     "input 'input': datatype BYTES does not fit the model's FP64"),
    ([{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": [None] * 30}],
     "input 'input': null/NaN at row 0 is not allowed"),
    ([{"name": "a", "shape": [1, 30], "datatype": "FP64", "data": [1.0] * 30},
      {"name": "b", "shape": [1, 30], "datatype": "FP64", "data": [1.0] * 30}],
     "unknown input 'a'; this model takes ['input']"),
])
def test_tensor_that_does_not_fit_is_a_400_naming_the_input(client: TestClient, inputs: Any,
                                                            message: str) -> None:
    response = client.post("/v2/models/cancer-array/infer", json={"inputs": inputs})
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


@pytest.mark.parametrize(("inputs", "message"), [
    ([{"name": "table", "shape": [1, 29], "datatype": "FP64", "data": [1.0] * 29}],
     "input 'table': shape [1, 29] does not fit this model's 30 columns"),
    ([{"name": "mean radius", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}],
     "input 'mean radius': a column takes shape [N] or [N, 1], got [1, 2]"),
    ([{"name": "mean radius", "shape": [1], "datatype": "FP64", "data": [1.0]}],
     "missing field 'mean texture'"),
    ([{"name": "mean radius", "shape": [1], "datatype": "FP64", "data": ["big"]}],
     "input 'mean radius': expected FP64, got string 'big' at row 0"),
])
def test_columns_that_do_not_fit_are_a_400(client: TestClient, inputs: Any,
                                           message: str) -> None:
    response = client.post("/v2/models/cancer/infer", json={"inputs": inputs})
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


def test_unknown_output_is_a_400_before_the_model_runs(client: TestClient,
                                                       served: Served) -> None:
    x = served.X.to_numpy()[:1]
    response = client.post("/v2/models/cancer-array/infer", json={
        "inputs": [tensor("input", x)], "outputs": [{"name": "logits"}]})
    assert response.status_code == 400
    assert response.json()["error"] == ("unknown output 'logits'; this model returns "
                                        "['predictions', 'probabilities']")


@pytest.mark.parametrize(("path", "status"), [
    ("/v2/models/nope/infer", 404),
    ("/v2/models/cancer/versions/9/infer", 404),
])
def test_infer_on_an_unknown_model_or_version_is_a_404(client: TestClient, path: str,
                                                       status: int) -> None:
    response = client.post(path, json={"inputs": []})
    assert response.status_code == status
    assert "error" in response.json()


def test_malformed_bodies_are_400s(client: TestClient) -> None:
    url = "/v2/models/cancer-array/infer"
    assert client.post(url, content=b"{nope").status_code == 400
    bad = client.post(url, content=b"{}", headers={codec.HEADER_LENGTH: "99"})
    assert bad.status_code == 400
    assert codec.HEADER_LENGTH in bad.json()["error"]
    odd = client.post(url, content=b"{}", headers={"content-encoding": "br"})
    assert odd.status_code == 415


def test_gzip_request_bodies_are_read(client: TestClient, served: Served) -> None:
    x = served.X.to_numpy()[:2]
    body = gzip.compress(orjson.dumps({"inputs": [tensor("input", x)]}))
    response = client.post("/v2/models/cancer-array/infer", content=body,
                           headers={"content-encoding": "gzip"})
    np.testing.assert_array_equal(outputs_of(response)["predictions"],
                                  served.array_model.predict(x))


def test_metrics_are_labelled_for_served_models_only(client: TestClient,
                                                     served: Served) -> None:
    x = served.X.to_numpy()[:1]
    client.post("/v2/models/cancer-array/infer", json={"inputs": [tensor("input", x)]})
    client.post("/v2/models/not-served/infer", json={"inputs": []})
    metrics = client.get("/metrics").text
    assert 'model="cancer-array",route="v2_infer",status="200"' in metrics
    assert "not-served" not in metrics


# --- binary tensor data extension, by hand --------------------------------------------


def test_binary_request_and_response_by_hand(client: TestClient, served: Served) -> None:
    x = served.X.to_numpy()[:4]
    head = orjson.dumps({
        "inputs": [{"name": "input", "shape": [4, 30], "datatype": "FP64",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                    {"name": "predictions"}],
    })
    response = client.post("/v2/models/cancer-array/infer", content=head + x.tobytes(),
                           headers={codec.HEADER_LENGTH: str(len(head)),
                                    "content-type": "application/octet-stream"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers[codec.HEADER_LENGTH])
    header = orjson.loads(response.content[:length])
    proba, labels = header["outputs"]
    assert proba["parameters"] == {"binary_data_size": 4 * 2 * 8}
    assert labels["data"] == served.array_model.predict(x).tolist()  # JSON unless asked
    got = np.frombuffer(response.content[length:], dtype="<f8").reshape(proba["shape"])
    np.testing.assert_allclose(got, served.array_model.predict_proba(x), rtol=1e-12)


def test_binary_data_of_the_wrong_size_is_a_400_naming_the_input(client: TestClient) -> None:
    head = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64",
                                     "parameters": {"binary_data_size": 16}}]})
    response = client.post("/v2/models/cancer-array/infer", content=head + b"\0" * 16,
                           headers={codec.HEADER_LENGTH: str(len(head))})
    assert response.status_code == 400
    assert response.json()["error"].startswith(
        "input 'input': 16 bytes of binary data do not hold shape [1, 30] of FP64")


# --- request tensors onto signatures --------------------------------------------------


def test_to_batch_on_a_multi_input_tensor_signature() -> None:
    sig = Signature(layout="tensor", inputs=[FieldSpec(name="a", datatype="FP32", shape=[2]),
                                             FieldSpec(name="flag", datatype="BOOL")])
    a = codec.Tensor("a", "FP64", np.ones((3, 2)))
    flag = codec.Tensor("flag", "INT8", np.array([0, 1, 1], dtype=np.int8))
    batch = sig.validate(to_batch(sig, [a, flag]))
    assert batch["a"].dtype == np.float32
    assert batch["flag"].tolist() == [False, True, True]
    with pytest.raises(Exception, match="input 'flag': datatype FP32 does not fit"):
        to_batch(sig, [a, codec.Tensor("flag", "FP32", np.ones(3, np.float32))])


# --- the real client ------------------------------------------------------------------


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yield host:port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    config = uvicorn.Config(app, log_config=None, access_log=False, ws="none",
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "the server thread died on start-up"
            assert time.monotonic() < deadline, "the server did not start in 30s"
            time.sleep(0.02)
        assert httpx.get(f"http://{host}:{port}/v2/health/ready").status_code == 200
        yield f"{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def triton_client(served: Served) -> Iterator[triton.InferenceServerClient]:
    with running(served.app()) as url:
        c = triton.InferenceServerClient(url=url)
        yield c
        c.close()


def test_tritonclient_health_and_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("cancer")
    assert triton_client.is_model_ready("cancer", "1")
    assert not triton_client.is_model_ready("cancer", "2")
    assert not triton_client.is_model_ready("nope")
    meta = triton_client.get_server_metadata()
    assert meta["name"] == "modelport"
    assert "binary_tensor_data" in meta["extensions"]
    model = triton_client.get_model_metadata("cancer-array", "1")
    assert model["platform"] == "modelport-sklearn"
    assert model["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 30]}]


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False, None])
def test_tritonclient_infer_matches_sklearn(triton_client: triton.InferenceServerClient,
                                            served: Served, binary_in: bool,
                                            binary_out: bool | None) -> None:
    x = served.X.to_numpy()[10:26]
    inp = triton.InferInput("input", list(x.shape), "FP64")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outputs = None if binary_out is None else [
        triton.InferRequestedOutput("predictions", binary_data=binary_out),
        triton.InferRequestedOutput("probabilities", binary_data=binary_out)]
    result = triton_client.infer("cancer-array", [inp], outputs=outputs, request_id="r-7")
    np.testing.assert_array_equal(result.as_numpy("predictions"),
                                  served.array_model.predict(x))
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               served.array_model.predict_proba(x), rtol=1e-12)
    response = result.get_response()
    assert response["id"] == "r-7"
    assert response["model_version"] == "1"
    binary = binary_out is not False  # no outputs named: tritonclient asks for binary
    assert ("parameters" in response["outputs"][0]) is binary


def test_tritonclient_requested_output_and_columns(triton_client: triton.InferenceServerClient,
                                                   served: Served) -> None:
    frame = served.X.iloc[:9]
    table = triton.InferInput("table", [9, 30], "FP32")
    table.set_data_from_numpy(frame.to_numpy(np.float32))
    result = triton_client.infer(
        "cancer", [table], outputs=[triton.InferRequestedOutput("probabilities")])
    assert result.as_numpy("predictions") is None
    rounded = frame.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               served.frame_model.predict_proba(rounded), rtol=1e-12)
    columns = []
    for name in frame.columns:
        col = triton.InferInput(name, [9, 1], "FP64")
        col.set_data_from_numpy(frame[[name]].to_numpy(), binary_data=len(columns) % 2 == 0)
        columns.append(col)
    result = triton_client.infer("cancer", columns, request_compression_algorithm="gzip")
    np.testing.assert_array_equal(result.as_numpy("predictions"),
                                  served.frame_model.predict(frame))


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_bytes_round_trip(triton_client: triton.InferenceServerClient,
                                       served: Served, binary: bool) -> None:
    frame = served.colors.iloc[20:32]
    color = triton.InferInput("color", [12], "BYTES")
    color.set_data_from_numpy(frame["color"].to_numpy(dtype=object), binary_data=binary)
    size = triton.InferInput("size", [12], "FP64")
    size.set_data_from_numpy(frame["size"].to_numpy(), binary_data=binary)
    result = triton_client.infer(
        "colors", [color, size],
        outputs=[triton.InferRequestedOutput("predictions", binary_data=binary)])
    got = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("predictions")]
    assert got == served.colors_model.predict(frame).tolist()


def test_tritonclient_errors(triton_client: triton.InferenceServerClient,
                            served: Served) -> None:
    x = served.X.to_numpy()[:2]
    with pytest.raises(InferenceServerException, match="not served here") as info:
        triton_client.get_model_metadata("nope")
    assert info.value.status() == "404"
    inp = triton.InferInput("input", [2, 30], "FP64").set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as info:
        triton_client.infer("nope", [inp])
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException) as info:
        triton_client.infer("cancer-array", [inp], model_version="3")
    assert info.value.status() == "404"
    narrow = triton.InferInput("input", [2, 29], "FP64").set_data_from_numpy(x[:, :29])
    with pytest.raises(InferenceServerException, match=r"input 'input'.*\[N, 30\]") as info:
        triton_client.infer("cancer-array", [narrow])
    assert info.value.status() == "400"
    text = triton.InferInput("input", [2, 30], "BYTES")
    text.set_data_from_numpy(np.full((2, 30), "x", dtype=object))
    with pytest.raises(InferenceServerException,
                       match="input 'input': datatype BYTES does not fit") as info:
        triton_client.infer("cancer-array", [text])
    assert info.value.status() == "400"
