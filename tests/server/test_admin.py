"""The admin API and API-key protection of the server's routes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from starlette.testclient import TestClient

from modelport import ModelConfig, Service, ServiceConfig
from modelport.errors import AliasNotFound, ConfigError
from modelport.registry import Registry
from modelport.security import KeyStore, add_key
from modelport.server import create_app
from modelport.settings import ServerSettings, Settings

NAME = "m"


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    return x, y


@pytest.fixture(scope="module")
def models(data: tuple[np.ndarray, np.ndarray]) -> list[Any]:
    """Two fitted models, once per module (scaled, so lbfgs converges in a few steps)."""
    x, y = data
    return [make_pipeline(StandardScaler(), LogisticRegression(C=c)).fit(x, y)
            for c in (1.0, 0.1)]


@pytest.fixture
def reg(settings: Settings, data: tuple[np.ndarray, np.ndarray],
        models: list[Any]) -> Iterator[Registry]:
    """Versions 1 and 2 of `m` (metric C = 1.0, 0.1); `production` at 1."""
    registry = Registry(settings=settings)
    for model, c in zip(models, (1.0, 0.1), strict=True):
        registry.register(NAME, model, sample_input=data[0][:5], metrics={"C": c})
    registry.set_alias(NAME, "production", 1)
    yield registry
    registry.close()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "keys.yaml"
    return {"path": path,
            "admin": add_key(path, "ops", ["admin"]),
            "predict": add_key(path, "web", ["predict"])}


def server_settings(settings: Settings, **server: Any) -> Settings:
    return settings.model_copy(update={"server": ServerSettings(**server)})


def client(settings: Settings, reg: Registry, keys: KeyStore | None = None) -> TestClient:
    # follow=False: only POST /admin/refresh can make the server notice an alias move
    config = ServiceConfig(models=[ModelConfig(ref=f"{NAME}@production")])
    return TestClient(create_app(Service(settings, config, reg, follow=False), keys=keys))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def predict(c: TestClient, x: np.ndarray, headers: dict[str, str] | None = None) -> Any:
    return c.post(f"/models/{NAME}/predict", json={"instances": x[:2].tolist()},
                  headers=headers or {})


@pytest.fixture
def admin(settings: Settings, reg: Registry, keys: dict[str, Any]) -> Iterator[TestClient]:
    """A server with the key file; requests carry the admin key."""
    with client(server_settings(settings, api_keys_file=keys["path"]), reg) as c:
        c.headers.update(bearer(keys["admin"]))
        yield c


# --- who may call the admin API -------------------------------------------------------


def test_admin_needs_a_key(settings: Settings, reg: Registry, keys: dict[str, Any]) -> None:
    with client(server_settings(settings, api_keys_file=keys["path"]), reg) as c:
        r = c.get("/admin/models")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert "'admin' scope" in r.json()["error"]
        assert "x-request-id" in r.headers  # refusals pass through RequestContext

        r = c.get("/admin/models", headers=bearer("mp_wrong"))
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert r.json() == {"error": "the API key is not valid"}

        r = c.get("/admin/models", headers=bearer(keys["predict"]))
        assert r.status_code == 403
        assert r.json() == {"error": "API key 'web' lacks the 'admin' scope"}

        assert c.get("/admin/models", headers=bearer(keys["admin"])).status_code == 200
        assert c.get("/admin/models", headers={"X-API-Key": keys["admin"]}).status_code == 200
        assert c.get("/admin/models",
                     headers={"Authorization": f"bearer  {keys['admin']} "}).status_code == 200
        # writes are refused before the registry is touched
        r = c.put(f"/admin/models/{NAME}/aliases/production", json={"version": 2},
                  headers=bearer(keys["predict"]))
        assert r.status_code == 403
    assert reg.get_alias(NAME, "production") == 1


def test_without_a_key_file_admin_is_closed(settings: Settings, reg: Registry) -> None:
    with client(settings, reg) as c:
        r = c.get("/admin/served")
        assert r.status_code == 401
        assert "no API keys" in r.json()["error"]
        assert c.get("/admin/served", headers=bearer("mp_anything")).status_code == 401


def test_a_key_store_can_be_passed_in(settings: Settings, reg: Registry,
                                      keys: dict[str, Any]) -> None:
    with client(settings, reg, keys=KeyStore.load(keys["path"])) as c:
        assert c.get("/admin/served", headers=bearer(keys["admin"])).status_code == 200


# --- reading --------------------------------------------------------------------------


def test_list_and_show_models(admin: TestClient) -> None:
    models = admin.get("/admin/models").json()["models"]
    assert models == [{"name": NAME, "description": None, "latest_version": 2,
                       "versions": 2, "aliases": {"production": 1}}]

    shown = admin.get(f"/admin/models/{NAME}").json()
    assert shown["name"] == NAME
    assert shown["aliases"] == {"production": 1}
    v1, v2 = shown["versions"]
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v1["aliases"] == ["production"]
    assert v2["aliases"] == []
    assert v1["metrics"] == {"C": 1.0}
    assert v1["flavor"] == "sklearn"
    assert len(v1["sha256"]) == 64
    assert v1["created_at"].endswith("+00:00")

    r = admin.get("/admin/models/nope")
    assert r.status_code == 404
    assert "nope" in r.json()["error"]


def test_served(admin: TestClient) -> None:
    body = admin.get("/admin/served").json()
    assert body["ready"] is True
    assert body["models"][NAME]["version"] == 1
    assert body["models"][NAME]["ref"] == f"{NAME}@production"


# --- moving aliases -------------------------------------------------------------------


def test_move_alias_then_refresh_changes_the_served_version(
        admin: TestClient, reg: Registry, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    assert predict(admin, x).json()["version"] == 1

    r = admin.put(f"/admin/models/{NAME}/aliases/production",
                  json={"version": 2, "reason": "better auc"})
    assert r.status_code == 200
    assert r.json() == {"name": NAME, "alias": "production", "version": 2, "previous": 1}
    assert reg.get_alias(NAME, "production") == 2
    event = reg.alias_history(NAME, "production")[-1]
    assert (event.kind, event.from_version, event.to_version) == ("set", 1, 2)
    assert event.actor == "ops"  # the key's name, not the server's login
    assert event.reason == "better auc"

    assert predict(admin, x).json()["version"] == 1  # no poller: nothing moved yet
    r = admin.post("/admin/refresh")
    assert r.status_code == 200
    assert r.json()["models"][NAME]["version"] == 2
    answer = predict(admin, x).json()
    assert answer["version"] == 2
    assert len(answer["predictions"]) == 2


def test_rollback_via_the_api(admin: TestClient, reg: Registry,
                              data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    admin.put(f"/admin/models/{NAME}/aliases/production", json={"version": 2})
    admin.post("/admin/refresh")
    assert predict(admin, x).json()["version"] == 2

    r = admin.post(f"/admin/models/{NAME}/aliases/production/rollback",
                   json={"reason": "latency"})
    assert r.status_code == 200
    assert r.json() == {"name": NAME, "alias": "production", "version": 1}
    assert reg.get_alias(NAME, "production") == 1
    admin.post("/admin/refresh")
    assert predict(admin, x).json()["version"] == 1

    history = admin.get(f"/admin/models/{NAME}/aliases/production/history").json()
    assert [(e["kind"], e["to_version"]) for e in history["events"]] == [
        ("set", 1), ("set", 2), ("rollback", 1)]
    assert history["events"][-1]["actor"] == "ops"
    assert history["events"][-1]["reason"] == "latency"

    r = admin.post(f"/admin/models/{NAME}/aliases/production/rollback")  # no body
    assert r.status_code == 409
    assert "no earlier version" in r.json()["error"]


def test_remove_alias(admin: TestClient, reg: Registry) -> None:
    admin.put(f"/admin/models/{NAME}/aliases/staging", json={"version": 2})
    r = admin.delete(f"/admin/models/{NAME}/aliases/staging", params={"reason": "done"})
    assert r.status_code == 200
    assert r.json() == {"name": NAME, "alias": "staging", "version": None, "previous": 2}
    with pytest.raises(AliasNotFound):
        reg.get_alias(NAME, "staging")
    event = reg.alias_history(NAME, "staging")[-1]
    assert (event.kind, event.actor, event.reason) == ("remove", "ops", "done")
    assert admin.delete(f"/admin/models/{NAME}/aliases/staging").status_code == 404


MALFORMED = [
    (b"", 400, "empty"),
    (b"{", 400, "not valid JSON"),
    (b"[2]", 400, "JSON object"),
    (b"{}", 400, "'version' is required"),
    (b'{"version": "2"}', 400, "'version'"),
    (b'{"version": true}', 400, "'version'"),
    (b'{"version": 0}', 400, "'version'"),
    (b'{"version": 2.0}', 400, "'version'"),
    (b'{"versoin": 2}', 400, "unknown field.*'versoin'"),
    (b'{"version": 2, "reason": 5}', 400, "'reason'"),
    (b'{"version": 9}', 404, "no version 9"),
]


def test_malformed_alias_moves_are_refused(admin: TestClient, reg: Registry) -> None:
    # one server for all the cases: starting one per case costs more than the checks
    for body, status, message in MALFORMED:
        r = admin.put(f"/admin/models/{NAME}/aliases/production", content=body,
                      headers={"content-type": "application/json"})
        assert r.status_code == status, body
        assert re.search(message, r.json()["error"]), (body, r.json())
    assert reg.get_alias(NAME, "production") == 1


def test_bad_names_in_paths(admin: TestClient) -> None:
    r = admin.put(f"/admin/models/{NAME}/aliases/1bad", json={"version": 2})
    assert r.status_code == 400
    assert "invalid alias" in r.json()["error"]
    assert admin.get("/admin/models/no-such/aliases/production/history").status_code == 404


# --- prediction routes ----------------------------------------------------------------


def test_prediction_is_open_by_default(settings: Settings, reg: Registry,
                                       keys: dict[str, Any],
                                       data: tuple[np.ndarray, np.ndarray]) -> None:
    with client(server_settings(settings, api_keys_file=keys["path"]), reg) as c:
        assert predict(c, data[0]).status_code == 200
        assert predict(c, data[0], bearer("mp_wrong")).status_code == 200  # not checked


def test_prediction_with_required_keys(settings: Settings, reg: Registry,
                                       keys: dict[str, Any],
                                       data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    both = add_key(keys["path"], "both", ["admin", "predict"])
    strict = server_settings(settings, api_keys_file=keys["path"], require_predict_key=True)
    with client(strict, reg) as c:
        r = predict(c, x)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert "'predict' scope" in r.json()["error"]
        assert predict(c, x, bearer("mp_wrong")).status_code == 401
        r = predict(c, x, bearer(keys["admin"]))  # admin does not imply predict
        assert r.status_code == 403
        assert r.json() == {"error": "API key 'ops' lacks the 'predict' scope"}
        assert predict(c, x, bearer(keys["predict"])).json()["version"] == 1
        assert predict(c, x, {"X-API-Key": keys["predict"]}).status_code == 200
        assert predict(c, x, bearer(both)).status_code == 200
        # v2 inference and routes added later are covered too (deny by default)
        for path in (f"/v2/models/{NAME}/infer", f"/v2/models/{NAME}/versions/1/infer",
                     "/pipelines/p/run"):
            assert c.post(path, json={}).status_code == 401
            assert c.post(path, json={}, headers=bearer(keys["admin"])).status_code == 403
        # open: probes, docs, the index page and metrics
        for path in ("/", "/docs", "/openapi.json", "/metrics", "/v2/health/live",
                     "/v2/health/ready"):
            assert c.get(path).status_code == 200, path


def test_required_predict_key_without_key_file_fails_at_start(settings: Settings,
                                                              reg: Registry) -> None:
    with pytest.raises(ConfigError, match="api_keys_file"):
        client(server_settings(settings, require_predict_key=True), reg)
