"""A pipeline's `stream:` section: which broker to consume, and how.

```yaml
pipelines:
  - name: score
    model: cancer@production
    writer: {type: sql, url: "${DATABASE_URL}", table: scores}
    stream:
      broker: {type: redis, url: "${REDIS_URL}", stream: patients, group: scorers}
      dead_letter: patients.dlq
      batch_size: 256
      max_deliveries: 5
      codec: json
```

Pure configuration: nothing here imports a broker's client, so a service whose yaml
names Kafka loads without aiokafka until `modelport stream` runs it.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelport.errors import ConfigError


class BrokerConfig(BaseModel):
    """`{type: redis, url: ..., stream: ..., group: ...}`: the broker and its options
    (the arguments of `RedisStreamsBroker`, `JetStreamBroker` or `KafkaBroker`)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["redis", "nats", "kafka"]

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StreamConfig(BaseModel):
    """How `modelport stream` runs a pipeline from a broker."""

    model_config = ConfigDict(extra="forbid")

    broker: BrokerConfig
    dead_letter: str = Field(min_length=1)
    """Stream, subject or topic where messages that cannot be processed go, with why."""
    batch_size: int = Field(256, ge=1, le=100_000)
    """Messages fetched, scored, written and acknowledged together."""
    max_deliveries: int = Field(5, ge=1)
    """A message delivered more often than this is dead-lettered unprocessed."""
    codec: Literal["json", "msgpack"] = "json"
    fetch_timeout: float = Field(1.0, gt=0)
    """Seconds a fetch waits for a first message."""


def make_broker(config: StreamConfig, where: str) -> Any:
    """The configured broker, its options checked against its constructor (`where`
    names the section in errors)."""
    from modelport.streams import broker_class

    cls = broker_class(config.broker.type)
    options = config.broker.options
    if config.broker.type == "nats":
        from modelport.streams.nats import check_max_deliver

        # one more delivery than the worker processes: the last one is dead-lettered
        options.setdefault("max_deliver", config.max_deliveries + 1)
        check_max_deliver(int(options["max_deliver"]), config.max_deliveries)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"{where}.broker: {exc} (options of {cls.__name__}: "
                          f"{', '.join(inspect.signature(cls).parameters)})") from None
    return cls(**options)
