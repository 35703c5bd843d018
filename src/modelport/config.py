"""Service configuration: one `modelport.yaml` per service, with `${ENV}` interpolation.

```yaml
models:
  - ref: cancer@production
pipelines:
  - name: score                       # what the pipeline is: PipelineConfig
    model: cancer@production
    writer: {type: sql, url: "${DATABASE_URL}", table: scores}
    schedule: "0 2 * * *"             # the triggers that run it: PipelineEntry
    keys: SELECT id FROM patients
    stream:
      broker: {type: redis, url: "${REDIS_URL}", stream: patients, group: scorers}
      dead_letter: patients.dlq
```

Values such as `${DATABASE_URL}` or `${DATABASE_URL:-sqlite:///x.db}` are filled from
the environment mapping handed in (the entry point passes `os.environ`); this module
reads no environment itself. Errors name the file, the key and what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelport.dataplane import ModelConfig
from modelport.errors import ConfigError
from modelport.pipeline.pipeline import PipelineConfig

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class BrokerConfig(BaseModel):
    """`{type: redis, url: ..., stream: ..., group: ...}`: the broker and its options
    (the arguments of `RedisStreamsBroker`, `JetStreamBroker` or `KafkaBroker`)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["redis", "nats", "kafka"]

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AvroConfig(BaseModel):
    """A stream's `avro:` section, with `codec: avro` (see `modelport.streams.avro`):
    bare Avro bodies of `schema`, or Confluent's wire format with the schemas in the
    registry at `registry_url`. A stream writer with `codec: avro` writes its results
    with `output_schema` (else one made from the results), registered under
    `output_subject` (else `<topic>-value`) when there is a registry."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: dict[str, Any] | str | None = Field(None, alias="schema")
    """The input messages' Avro schema (a mapping, or its JSON text)."""
    registry_url: str | None = None
    """A Confluent-compatible schema registry: input schemas by id, output registered."""
    output_subject: str | None = None
    output_schema: dict[str, Any] | str | None = None
    timeout: float = Field(5.0, gt=0)
    """Seconds a registry request may take before it counts as an outage."""

    @model_validator(mode="after")
    def _one_source(self) -> AvroConfig:
        if self.schema_ is not None and self.registry_url is not None:
            raise ValueError("give schema or registry_url for the input, not both")
        return self


class StreamConfig(BaseModel):
    """A pipeline's `stream:` section: how `modelport stream` runs it from a broker.

    Pure configuration: nothing here imports a broker's client, so a service whose yaml
    names Kafka loads without aiokafka until `modelport stream` runs it."""

    model_config = ConfigDict(extra="forbid")

    broker: BrokerConfig
    dead_letter: str = Field(min_length=1)
    """Stream, subject or topic where messages that cannot be processed go, with why."""
    batch_size: int = Field(256, ge=1, le=100_000)
    """Messages fetched, scored, written and acknowledged together."""
    max_deliveries: int = Field(5, ge=1)
    """A message delivered more often than this is dead-lettered unprocessed."""
    codec: Literal["json", "msgpack", "avro"] = "json"
    avro: AvroConfig | None = None
    """With `codec: avro`: the schema, or the registry holding the schemas."""
    fetch_timeout: float = Field(1.0, gt=0)
    """Seconds a fetch waits for a first message."""

    @model_validator(mode="after")
    def _avro_options(self) -> StreamConfig:
        if self.codec == "avro" and (self.avro is None or (
                self.avro.schema_ is None and self.avro.registry_url is None)):
            raise ValueError("codec avro needs avro: {schema: ...} or "
                             "avro: {registry_url: ...}")
        if self.codec != "avro" and self.avro is not None:
            raise ValueError(f"an avro: section is for codec: avro, not {self.codec}")
        return self


class RayConfig(BaseModel):
    """For batch runs on Ray (`engine: ray`): the cluster and how the job is cut up."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    """`ray://HOST:10001` (Ray Client), `HOST:6379` (on a cluster node) or `auto`; default
    a Ray started for the job, on loopback."""
    actors: int = Field(2, ge=1)
    """Scoring actors, each loading the model once and scoring one batch at a time."""
    block_size: int = Field(100_000, ge=1)
    """Rows per block: the unit read in parallel, and committed (and redone) whole."""
    cpus_per_actor: float = Field(1.0, gt=0)


class PipelineEntry(PipelineConfig):
    """One pipeline under `pipelines:`: what it is built from (`PipelineConfig`) and the
    options of the triggers that run it, which the pipeline itself never reads."""

    # a PipelineConfig built in Python is accepted where an entry is expected
    model_config = ConfigDict(from_attributes=True)

    schedule: str | None = None
    """Cron expression: `modelport schedule` runs this pipeline's batch job then."""
    keys: str | None = None
    """For scheduled batch runs: the query (or file) that lists the keys to score."""
    chunk_size: int = Field(10_000, ge=1)
    engine: Literal["local", "ray"] = "local"
    """Where batch runs go: `local` (this process) or `ray` (Ray Data; `pip install
    'modelport[ray]'`)."""
    ray: RayConfig = Field(default_factory=RayConfig)
    stream: StreamConfig | None = None
    """For `modelport stream`: the broker to consume, dead letters, batch size."""


class DriftTrigger(BaseModel):
    """Retrain when production's input drift passes `threshold`, looked at on `check`."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.25, gt=0)
    """The largest feature PSI over `window` above which the model is retrained."""
    check: str = "*/15 * * * *"
    """Cron expression: when drift is looked at."""
    window: str = "24h"
    """Logged inputs of the production version this far back; also the least time
    between two retrainings for drift (a refused candidate leaves the drift in place)."""


class RetrainConfig(BaseModel):
    """One retraining job under `retrain:`: train, register, gate, promote, guard."""

    model_config = ConfigDict(extra="forbid")

    name: str
    model: str
    """The registered model the trainer produces versions of."""
    entry_point: str | None = None
    """`module:function`, called with a `RetrainContext`; returns the registered
    version (or a `Trained` with the trainer's own gate)."""
    command: list[str] | None = None
    """A command that registers a new version itself (`modelport models register …`)."""
    alias: str = "production"
    gate: str | None = None
    """E.g. `auc>=production`: the candidate must win to be promoted."""
    guard: str | None = None
    """E.g. `error_rate<1%,p99_ms<50`: watched for `window` after the promotion."""
    window: str = "10m"
    min_requests: int = Field(10, ge=1)
    schedule: str | None = None
    """Cron expression (UTC): `modelport schedule` retrains then."""
    drift: DriftTrigger | None = None

    @model_validator(mode="after")
    def _one_trainer(self) -> RetrainConfig:
        # neither is for Python, where the trainer is handed to the Retrainer
        if self.entry_point is not None and self.command is not None:
            raise ValueError(f"retrain {self.name!r}: give entry_point (module:function) "
                             "or command, not both")
        return self


class ServiceConfig(BaseModel):
    """What one service runs."""

    # a misspelt key is refused, naming it, rather than leaving a default silently
    model_config = ConfigDict(extra="forbid")

    name: str = "modelport"
    models: list[ModelConfig] = Field(default_factory=list)
    pipelines: list[PipelineEntry] = Field(default_factory=list)
    retrain: list[RetrainConfig] = Field(default_factory=list)

    def model_for(self, ref: str) -> ModelConfig:
        """The served model a pipeline's `model: ref` uses; added when not listed."""
        for model in self.models:
            if model.ref == ref:
                return model
        model = ModelConfig(ref=ref)
        if any(m.served_name == model.served_name for m in self.models):
            model.name = f"{model.served_name}-{len(self.models)}"
        self.models.append(model)
        return model


def interpolate(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    if isinstance(value, str):
        def fill(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{where or 'config'}: ${{{name}}} is not set in the environment")
        return _VAR.sub(fill, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{where}.{k}" if where else str(k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def load_config(path: Path, env: Mapping[str, str]) -> ServiceConfig:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return ServiceConfig.model_validate(interpolate(raw, env))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        message = ("not an option here (misspelt?)" if first["type"] == "extra_forbidden"
                   else first["msg"])
        raise ConfigError(f"{path}: {key}: {message}") from exc
