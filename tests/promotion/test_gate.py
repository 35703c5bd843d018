"""The gate of `modelport promote --gate`, on registered metrics or a hold-out, and the
admin API's promote route."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flaky_models import Summer
from starlette.testclient import TestClient

from modelport import ModelConfig, Registry, Service, ServiceConfig, Settings
from modelport.cli import run
from modelport.promotion import MetricGate, promote
from modelport.security import add_key
from modelport.server import create_app
from modelport.settings import MonitoringSettings, ServerSettings
from waiting import wait_for

NAME = "m"


@pytest.fixture
def pg_settings(tmp_path: Path, pg_url: str) -> Settings:
    return Settings(home=tmp_path / "home", registry_url=pg_url,
                    monitoring=MonitoringSettings(flush_interval_s=0.1))


@pytest.fixture
def reg(pg_settings: Settings) -> Iterator[Registry]:
    """v1 (auc 0.90, production), v2 (auc 0.85: worse), v3 (auc 0.95: better)."""
    registry = Registry(settings=pg_settings)
    for auc, mae in ((0.90, 3.0), (0.85, 2.0), (0.95, 4.0)):
        registry.register(NAME, Summer(), sample_input=np.ones((2, 3)), trusted=True,
                          metrics={"auc": auc, "mae": mae})
    registry.set_alias(NAME, "production", 1)
    yield registry
    registry.close()


def test_a_worse_candidate_exits_1_moves_nothing_and_the_refusal_is_recorded(
        reg: Registry, pg_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["promote", NAME, "2", "--gate", "auc>=production"], pg_settings) == 1
    out = capsys.readouterr().out
    assert "gate refused: auc 0.85 < production v1 0.9" in out
    assert reg.get_alias(NAME, "production") == 1
    last = reg.alias_history(NAME, "production")[-1]
    assert (last.kind, last.from_version, last.to_version) == ("refuse", 1, 2)
    assert last.reason is not None and "auc 0.85 < production v1 0.9" in last.reason
    # a refusal is not a move: a rollback still goes where the last move came from
    assert run(["promote", NAME, "3", "--gate", "auc>=production"], pg_settings) == 0
    assert reg.get_alias(NAME, "production") == 3
    assert "gate: auc 0.95 >= production v1 0.9" in (
        reg.alias_history(NAME, "production")[-1].reason or "")
    assert reg.rollback(NAME, "production").version == 1


def test_a_loss_metric_wins_by_being_lower_and_a_margin_raises_the_bar(
        reg: Registry, pg_settings: Settings) -> None:
    assert run(["promote", NAME, "2", "--gate", "mae<=production", "--dry-run"],
               pg_settings) == 0
    assert run(["promote", NAME, "3", "--gate", "mae<=production"], pg_settings) == 1
    assert run(["promote", NAME, "3", "--gate", "auc>=production+0.1"], pg_settings) == 1
    assert run(["promote", NAME, "3", "--gate", "auc>0.94", "--dry-run"], pg_settings) == 0
    # --dry-run neither moves nor records
    assert reg.get_alias(NAME, "production") == 1
    assert [e.kind for e in reg.alias_history(NAME, "production")] == ["set", "refuse",
                                                                       "refuse"]


@pytest.mark.parametrize(("args", "says"), [
    (["--gate", "auc>=prod"], "gate 'auc>=prod' is not METRIC>=production"),
    (["--guard", "error_rate<1%,latency<5"], "no live metric 'latency'"),
    (["--guard", "error_rate 1%"], "guard bound 'error_rate 1%' is not METRIC<VALUE"),
    (["--guard", "error_rate<1%", "--window", "soon"], "window 'soon' is not a duration"),
])
def test_a_bad_expression_is_one_line_and_exit_2(
        reg: Registry, pg_settings: Settings, capsys: pytest.CaptureFixture[str],
        args: list[str], says: str) -> None:
    assert run(["promote", NAME, "3", *args], pg_settings) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert reg.get_alias(NAME, "production") == 1


def test_a_candidate_without_the_metric_is_an_error_naming_it(
        reg: Registry, pg_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["promote", NAME, "3", "--gate", "recall>=production"], pg_settings) == 1
    assert "m:3 has no numeric metric 'recall' (registered: auc, mae)" in \
        capsys.readouterr().err


def test_a_hold_out_gate_scores_both_versions_on_the_same_rows(reg: Registry) -> None:
    scored: list[int] = []

    def evaluate(version):  # type: ignore[no-untyped-def]
        scored.append(version.version)
        return {"accuracy": {1: 0.7, 2: 0.8}[version.version]}

    p = promote(reg, NAME, 2, gate=MetricGate("accuracy>=production", evaluate))
    assert p.moved and sorted(scored) == [1, 2]
    assert p.verdict is not None and "on the hold-out" in p.verdict.reason


def test_the_admin_api_gates_promotes_and_runs_a_guard(
        reg: Registry, pg_settings: Settings, tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    admin = {"Authorization": f"Bearer {add_key(keys, 'ops', ['admin'])}"}
    settings = pg_settings.model_copy(update={"server": ServerSettings(api_keys_file=keys)})
    config = ServiceConfig(models=[ModelConfig(ref=f"{NAME}@production", trusted=True)])
    url = f"/admin/models/{NAME}/aliases/production/promote"
    with TestClient(create_app(Service(settings, config, reg))) as c:
        refused = c.post(url, json={"version": 2, "gate": "auc>=production"}, headers=admin)
        assert refused.status_code == 409
        assert refused.json()["gate"]["verdict"] == "refuse"
        bad = c.post(url, json={"version": 3, "guard": "error_rate<<1"}, headers=admin)
        assert bad.status_code == 400 and "error_rate<<1" in bad.json()["error"]
        r = c.post(url, json={"version": 3, "gate": "auc>=production",
                              "guard": "error_rate<1%", "window": "1s"}, headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["previous"] == 1 and r.json()["guard"]["outcome"] == "watching"
        for _ in range(3):
            assert c.post(f"/models/{NAME}/predict", json={"instances": [[1, 2, 3]]}
                          ).status_code == 200

        def outcome() -> str:
            return str(c.get("/admin/guards", headers=admin).json()["guards"][0]["outcome"])

        wait_for(lambda: outcome() != "watching", what="the guard's decision")
        assert outcome() == "held"
    last = reg.alias_history(NAME, "production")[-1]
    assert (last.kind, last.actor, last.to_version) == ("hold", "guard", 3)
    assert reg.get_alias(NAME, "production") == 3
