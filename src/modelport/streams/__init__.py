"""Streams: a broker as a pipeline's trigger, one module per broker.

Public: `__all__`. Broker clients (redis, nats-py, aiokafka) are imported only when
their broker is used. `StreamWorker`, `StreamWriter` and `StreamRunner` load on first
use too, so that naming a broker or its configuration does not load the pipeline and
service machinery. Avro (`streams.avro`: fastavro, httpx) loads only for `codec: avro`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelport.errors import ConfigError
from modelport.lazy import lazy_exports
from modelport.streams.base import Broker, DeadLetter, Message
from modelport.streams.config import StreamConfig

if TYPE_CHECKING:
    from modelport.streams.kafka import KafkaBroker
    from modelport.streams.memory import MemoryBroker, MemoryBus
    from modelport.streams.nats import JetStreamBroker
    from modelport.streams.redis import RedisStreamsBroker
    from modelport.streams.runner import StreamRunner, stream_worker
    from modelport.streams.worker import StreamWorker
    from modelport.streams.writer import StreamWriter

BROKERS: dict[str, str] = {
    "memory": "modelport.streams.memory:MemoryBroker",
    "redis": "modelport.streams.redis:RedisStreamsBroker",
    "nats": "modelport.streams.nats:JetStreamBroker",
    "kafka": "modelport.streams.kafka:KafkaBroker",
}
_LAZY = {
    "StreamWorker": "modelport.streams.worker",
    "StreamWriter": "modelport.streams.writer",
    "StreamRunner": "modelport.streams.runner",
    "stream_worker": "modelport.streams.runner",
    "MemoryBroker": "modelport.streams.memory",
    "MemoryBus": "modelport.streams.memory",
    "RedisStreamsBroker": "modelport.streams.redis",
    "JetStreamBroker": "modelport.streams.nats",
    "KafkaBroker": "modelport.streams.kafka",
}


def broker_class(kind: str) -> Any:
    try:
        module, _, attr = BROKERS[kind].partition(":")
    except KeyError:
        raise ConfigError(f"unknown broker {kind!r}; known: {', '.join(BROKERS)}") from None
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(f"the {kind} broker needs: pip install 'modelport[{kind}]' ({exc})") \
            from exc


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["BROKERS", "Broker", "DeadLetter", "JetStreamBroker", "KafkaBroker",
           "MemoryBroker", "MemoryBus", "Message", "RedisStreamsBroker", "StreamConfig",
           "StreamRunner", "StreamWorker", "StreamWriter", "broker_class", "stream_worker"]
