"""Retraining in the library: trainer → register → gate → promote (→ guard), each
decision in the alias history; on a schedule and on drift. Real PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import retrain_trainers
from flaky_models import Summer

from modelport import Registry, Settings
from modelport.config import DriftTrigger, RetrainConfig, ServiceConfig
from modelport.errors import ConfigError
from modelport.jobs import Scheduler
from modelport.jobs.retrain import Retrainer, TrainerError, add_retrain_jobs
from modelport.monitoring.logstore import LogStore

NAME = "m"
RNG = np.random.default_rng(0)


@pytest.fixture
def pg_settings(tmp_path: Path, pg_url: str) -> Settings:
    return Settings(home=tmp_path / "home", registry_url=pg_url)


@pytest.fixture
def reg(pg_settings: Settings) -> Iterator[Registry]:
    """v1 (auc 0.9) in production, its drift profile from standard normal inputs."""
    registry = Registry(settings=pg_settings)
    registry.register(NAME, Summer(), sample_input=np.ones((2, 3)), trusted=True,
                      metrics={"auc": 0.9}, reference_data=RNG.normal(size=(1000, 3)))
    registry.set_alias(NAME, "production", 1)
    retrain_trainers.CALLS.clear()
    yield registry
    registry.close()


def job(**fields: object) -> RetrainConfig:
    defaults: dict[str, object] = {"name": "nightly", "model": NAME,
                                   "entry_point": "retrain_trainers:better",
                                   "gate": "auc>=production"}
    return RetrainConfig.model_validate(defaults | fields)


def test_a_better_candidate_is_promoted_with_the_gates_reason(reg: Registry) -> None:
    outcome = Retrainer(reg, job()).run()
    assert outcome.promoted and outcome.kept and outcome.version == 2
    assert reg.get_alias(NAME, "production") == 2
    last = reg.alias_history(NAME, "production")[-1]
    assert (last.kind, last.actor, last.from_version, last.to_version) == (
        "set", "retrain:nightly", 1, 2)
    assert last.reason is not None
    assert "retrain:nightly (manual)" in last.reason
    assert "gate: auc 0.99 >= production v1 0.9" in last.reason
    context = retrain_trainers.CALLS[0]
    assert context.production is not None and context.production.version == 1


def test_a_worse_trainer_leaves_production_unchanged_with_the_reason_recorded(
        reg: Registry) -> None:
    outcome = Retrainer(reg, job(entry_point="retrain_trainers:worse")).run()
    assert not outcome.promoted and outcome.version == 2
    assert outcome.reason == "gate refuse: auc 0.5 < production v1 0.9 as registered " \
                             "(gate auc>=production)"
    assert reg.get_alias(NAME, "production") == 1
    last = reg.alias_history(NAME, "production")[-1]
    assert (last.kind, last.actor, last.from_version, last.to_version) == (
        "refuse", "retrain:nightly", 1, 2)
    assert last.reason == outcome.reason


def test_a_command_trainer_registers_its_own_version(reg: Registry, pg_settings: Settings,
                                                     tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from flaky_models import Summer\n"
        "from modelport import Registry, Settings\n"
        "with Registry(settings=Settings(home=sys.argv[2], registry_url=sys.argv[1])) as r:\n"
        "    r.register('m', Summer(), sample_input=np.ones((2, 3)), trusted=True,\n"
        "               metrics={'auc': float(sys.argv[3])})\n")
    command = [sys.executable, str(script), pg_settings.resolved_registry_url,
               str(pg_settings.home), "0.95"]
    outcome = Retrainer(reg, job(entry_point=None, command=command)).run()
    assert outcome.kept and reg.get_alias(NAME, "production") == 2
    failing = [sys.executable, "-c", "raise SystemExit('no data today')"]
    with pytest.raises(TrainerError, match="exited 1: no data today"):
        Retrainer(reg, job(entry_point=None, command=failing)).run()
    idle = [sys.executable, "-c", "pass"]
    with pytest.raises(TrainerError, match="registered no new version of m"):
        Retrainer(reg, job(entry_point=None, command=idle)).run()


def test_a_trainer_that_returns_no_version_is_an_error(reg: Registry) -> None:
    with pytest.raises(TrainerError, match="returned str, not the version it registered"):
        Retrainer(reg, job(entry_point="retrain_trainers:nothing")).run()


async def test_the_schedule_runs_it_as_a_job(reg: Registry) -> None:
    config = ServiceConfig(retrain=[job(schedule="0 3 * * *")])
    scheduler = Scheduler()
    (retrainer,) = add_retrain_jobs(scheduler, reg, config)
    assert list(scheduler.jobs) == ["nightly"]
    (name,) = scheduler.run_pending(scheduler.jobs["nightly"].next_at)
    task = scheduler.jobs[name].task
    assert task is not None
    await task
    assert retrainer.last is not None and retrainer.last.trigger == "schedule"
    assert reg.get_alias(NAME, "production") == 2
    with pytest.raises(ConfigError, match="nothing triggers it"):
        add_retrain_jobs(Scheduler(), reg, ServiceConfig(retrain=[job()]))


def _log(pg_settings: Settings, inputs: np.ndarray) -> None:
    now = datetime.now(UTC)
    store = LogStore(pg_settings.resolved_log_url)
    store.write([{"ts": now - timedelta(minutes=1), "model": NAME, "version": 1,
                  "source": "test", "latency_ms": 1.0, "request_id": None,
                  "inputs": {"input": row.tolist()}, "outputs": {"output": 0.0}}
                 for row in inputs], {})
    store.close()


def test_drift_over_the_threshold_retrains_once_per_window(reg: Registry,
                                                           pg_settings: Settings) -> None:
    config = job(drift=DriftTrigger(threshold=0.25, window="1h"))
    retrainer = Retrainer(reg, config)
    _log(pg_settings, RNG.normal(size=(300, 3)))  # like the training data
    assert retrainer.drift_check() is None and not retrain_trainers.CALLS
    _log(pg_settings, RNG.normal(loc=3.0, size=(600, 3)))  # shifted by three sigmas
    outcome = retrainer.drift_check()
    assert outcome is not None and outcome.kept
    assert outcome.trigger.startswith("drift: ") and outcome.trigger.endswith(" > 0.25 on v1")
    last = reg.alias_history(NAME, "production")[-1]
    assert last.reason is not None and "(drift: " in last.reason
    # the new version has no logged inputs yet, and the window has not passed anyway
    assert retrainer.drift_check() is None and len(retrain_trainers.CALLS) == 1


def test_bad_retrain_config_is_refused_in_one_line(reg: Registry) -> None:
    with pytest.raises(ValueError, match="give entry_point"):
        job(command=["true"])
    with pytest.raises(ConfigError, match="retrain 'nightly': guard bound 'p99<5'"):
        Retrainer(reg, job(guard="p99<5"))
    with pytest.raises(ConfigError, match="cannot import 'retrain_trainers:missing'"):
        Retrainer(reg, job(entry_point="retrain_trainers:missing"))


def test_modelport_retrain_runs_a_configured_job_once(
        reg: Registry, pg_settings: Settings, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from modelport.cli import run

    config = tmp_path / "modelport.yaml"
    config.write_text("retrain:\n"
                      "  - name: nightly\n"
                      "    model: m\n"
                      "    entry_point: retrain_trainers:worse\n"
                      "    gate: auc>=production\n"
                      "    schedule: '0 3 * * *'\n")
    assert run(["retrain", "-c", str(config)], pg_settings) == 0
    assert "m:2 not promoted: gate refuse: auc 0.5 < production v1 0.9" in \
        capsys.readouterr().out
    assert run(["retrain", "other", "-c", str(config)], pg_settings) == 1
    assert "no retrain: job named 'other' (jobs: nightly)" in capsys.readouterr().err
