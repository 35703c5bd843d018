"""Streams: a broker as a pipeline's trigger, one module per broker.

Broker clients (redis, nats-py, aiokafka) are imported only when their broker is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from modelport.errors import ConfigError
from modelport.streams.base import Broker, DeadLetter, Message
from modelport.streams.worker import StreamWorker

BROKERS: dict[str, str] = {
    "memory": "modelport.streams.memory:MemoryBroker",
    "redis": "modelport.streams.redis:RedisStreamsBroker",
    "nats": "modelport.streams.nats:JetStreamBroker",
    "kafka": "modelport.streams.kafka:KafkaBroker",
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


__all__ = ["BROKERS", "Broker", "DeadLetter", "Message", "StreamWorker", "broker_class"]
