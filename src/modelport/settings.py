"""Server-wide settings: the only module that reads the environment.

Read once (`Settings()`), then passed down to whatever needs them. Every field can be
set by a `MODELPORT_`-prefixed variable; nested groups use a double underscore, e.g.
`MODELPORT_SERVER__PORT=9000` or `MODELPORT_BATCHING__MAX_BATCH_SIZE=64`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BatchingSettings(BaseModel):
    """Defaults for every model's adaptive batcher (a service config may override them)."""

    enabled: bool = True
    """Coalesce concurrent requests into one model call."""
    max_batch_size: int = Field(64, ge=1)
    """Most rows one model call receives."""
    max_delay_ms: float = Field(2.0, ge=0)
    """Longest a request waits for company once the model is free; 0 waits for none."""
    max_queue: int = Field(1024, ge=1)
    """Requests waiting per model version before new ones get a 503."""


class ServerSettings(BaseModel):
    """How `modelport serve` listens and protects itself."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    """Worker processes for models that hold the GIL (sklearn and friends)."""
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1)
    """Larger request bodies get 413 before they are read whole."""
    request_timeout_s: float = Field(30.0, gt=0)
    """A request still waiting for its prediction after this long gets 504."""
    poll_interval_s: float = Field(2.0, gt=0)
    """How often a server checks the registry for moved aliases."""
    api_keys_file: Path | None = None
    """YAML/JSON file of hashed API keys and scopes; none means open prediction routes."""
    require_predict_key: bool = False
    """Prediction routes need a key with the `predict` scope."""
    log_json: bool = True
    """Logs as one JSON object per line (else plain text)."""
    access_log: bool = True
    """Log every request (with its request id, status and latency)."""


class MonitoringSettings(BaseModel):
    """The prediction log: exact traffic counts and a sample of inputs and outputs.

    Inputs are stored as sent: lower `sample_rate` (0 keeps only the counts) or turn
    `enabled` off where they must not be kept.
    """

    enabled: bool = True
    """Record traffic and sampled predictions; off, nothing is recorded."""
    sample_rate: float = Field(0.1, ge=0, le=1)
    """Share of predicted rows whose inputs and outputs are stored (0: none; the
    traffic counts stay exact either way)."""
    log_url: str | None = None
    """SQLAlchemy URL of the prediction log's database; default the registry's."""
    buffer_size: int = Field(10_000, ge=1)
    """Sampled rows held in memory for the next write; beyond it new samples are
    dropped and counted, so a slow database never slows predictions."""
    flush_interval_s: float = Field(2.0, gt=0)
    """How often the buffer is written (sooner when it is a quarter full)."""
    max_rows_per_call: int = Field(100, ge=1)
    """Most rows sampled from one model call, so one batch chunk cannot fill the log."""
    seed: int | None = None
    """Seed of the sampler, for reproducible samples (tests); none draws a fresh one."""
    drift_interval_s: float = Field(60.0, ge=0)
    """How often each served version's input drift is computed from the log and
    exported as gauges (`modelport_drift_*`); 0 turns the live drift off."""
    drift_window_s: float = Field(3600.0, gt=0)
    """The recent window drift is computed over (ending at the last whole interval,
    so every replica reads the same rows)."""
    drift_max_rows: int = Field(5000, ge=1)
    """Most sampled rows read per version for one computation (spread over the
    window): what bounds its cost."""
    quality_interval_s: float = Field(60.0, ge=0)
    """How often a server recomputes its versions' live quality from feedback
    (`modelport_live_quality`); 0: never."""
    quality_window_s: float = Field(7 * 86400.0, gt=0)
    """Predictions of how long before are judged by the live-quality gauges."""


class Settings(BaseSettings):
    """All of modelport's settings; construct once at the entry point."""

    model_config = SettingsConfigDict(
        env_prefix="MODELPORT_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    home: Path = Path(".modelport")
    """Where local state lives by default (registry database, artifacts, caches)."""
    registry_url: str | None = None
    """SQLAlchemy URL of the registry metadata; default a SQLite file under `home`."""
    artifacts: str | None = None
    """Artifact store: a directory, or `s3://bucket/prefix`; default `home/artifacts`."""
    s3_endpoint_url: str | None = None
    """Endpoint of an S3-compatible store (MinIO, moto, …); AWS when unset."""
    cache_dir: Path | None = None
    """Where verified artifacts are unpacked for loading; default `home/cache`."""
    user: str | None = None
    """Recorded as the actor of alias moves; default the login name."""
    prometheus_multiproc_dir: str | None = Field(
        None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR",
                                            "prometheus_multiproc_dir"))
    """prometheus_client's multiprocess folder (`PROMETHEUS_MULTIPROC_DIR`, without the
    prefix: prometheus_client reads the same variable): set, /metrics reports every
    process that writes there."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)

    @field_validator("home", "cache_dir")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        # `MODELPORT_HOME=~/.modelport` must not create a folder literally named "~"
        return value.expanduser() if value is not None else None

    @property
    def resolved_registry_url(self) -> str:
        return self.registry_url or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def resolved_log_url(self) -> str:
        return self.monitoring.log_url or self.resolved_registry_url

    @property
    def resolved_artifacts(self) -> str:
        return self.artifacts or str(self.home / "artifacts")

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.home / "cache"


def environment() -> Mapping[str, str]:
    """The process environment, for `${VAR}` interpolation in service configs."""
    return os.environ
