"""The broker a pipeline's `stream:` section names, made from it.

The section itself (`StreamConfig`) is configuration, in `modelport.config`; a broker's
client is imported only here, when `modelport stream` runs it.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from modelport.config import StreamConfig
from modelport.errors import ConfigError

if TYPE_CHECKING:
    from modelport.streams.codec import Codec, Format

__all__ = ["StreamConfig", "make_broker", "make_codec"]


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


def make_codec(config: StreamConfig, where: str) -> Codec | Format:
    """How the section's payloads are read: a codec's name, or the Avro format (its
    schema parsed now, so a bad one is refused at start)."""
    if config.codec != "avro":
        return config.codec
    from modelport.streams.avro import AvroFormat

    assert config.avro is not None  # StreamConfig checks it
    try:
        return AvroFormat.from_config(config.avro)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
