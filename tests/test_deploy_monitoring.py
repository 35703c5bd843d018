"""deploy/prometheus/alerts.yml and deploy/grafana/modelport.json: valid, and about the
metrics a modelport server exports.

`promtool` (Debian's `prometheus` package; `.ci/run` installs it) checks the rules,
runs their unit tests (alerts.test.yml) and parses every dashboard query; without it
those tests skip and say why, and the structure and metric-name checks still run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from modelport import Service, ServiceConfig, Settings
from modelport.server import create_app

DEPLOY = Path(__file__).parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "modelport.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")

_METRIC = re.compile(r"\b(modelport_[a-z0-9_]+)\b")
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_count", "_sum", "_created")}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_queries() -> list[str]:
    queries = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    template = [v["definition"] for v in dashboard()["templating"]["list"]
                if v.get("type") == "query"]
    return queries + template


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for group in doc["groups"] for r in group["rules"]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every series name a server's /metrics may show (from its `# TYPE` lines)."""
    settings = Settings(home=tmp_path_factory.mktemp("home"))
    with TestClient(create_app(Service(settings, ServiceConfig()))) as client:
        text = client.get("/metrics").text
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        base = name.removesuffix("_total") if kind == "counter" else name
        names |= {base + suffix for suffix in _SUFFIXES.get(kind, ("",))}
    return names


def test_every_rule_is_complete() -> None:
    found = rules()
    assert {r["alert"] for r in found} >= {
        "ModelportInputDrift", "ModelportHighErrorRate", "ModelportHighLatency",
        "ModelportShadowDisagreement", "ModelportLiveQualityMoved"}
    for rule in found:
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert _METRIC.search(rule["expr"]), rule["alert"]


def test_rules_and_dashboard_use_only_metrics_we_export(exported: set[str]) -> None:
    assert "modelport_drift_score" in exported and "modelport_request_seconds_bucket" \
        in exported, "the /metrics parsing found the live drift and latency series"
    used = {name for text in [r["expr"] for r in rules()] + dashboard_queries()
            for name in _METRIC.findall(text)}
    unknown = used - exported
    assert not unknown, f"not exported by modelport: {sorted(unknown)}"
    assert {"modelport_drift_level", "modelport_drift_score", "modelport_shadow_agreement",
            "modelport_live_quality"} <= used


def test_the_dashboard_is_grafana_json_with_a_query_per_panel() -> None:
    data = dashboard()
    assert data["uid"] == "modelport" and data["title"]
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    titles = " ".join(p["title"] for p in data["panels"]).lower()
    for topic in ("drift", "error rate", "latency", "shadow agreement", "live quality"):
        assert topic in titles


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([PROMTOOL, "test", "rules", "alerts.test.yml"],
                          cwd=RULES.parent, capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # Grafana's variables stand for a regex and a range; as recording rules promtool
    # parses each query as Prometheus will run it
    assert PROMTOOL is not None
    records = [{"record": f"dashboard:query_{i}",
                "expr": q.replace("$__rate_interval", "5m").replace("$model", ".*")}
               for i, q in enumerate(dashboard_queries()) if not q.startswith("label_values")]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    check = subprocess.run([PROMTOOL, "check", "rules", str(path)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
