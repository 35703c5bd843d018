"""A writer that publishes results to a stream, subject or topic.

Each result row becomes one message, `{"id": <key>, "<output>": <value>, …}`, keyed by
the row's key (for a stream trigger, the input message's id): Kafka's record key (so a
compacted topic keeps the latest result per id), JetStream's de-duplication id (a
result published twice within the duplicate window is stored once), a `key` field of
the Redis stream entry. Consumers of the outputs see at-least-once delivery, like any
stream: a crash between publishing and acking the input publishes again.

In `modelport stream`, a stream writer without a `broker` publishes through the
pipeline's own broker; elsewhere (serve, batch) it names one:

```yaml
writer: {type: stream, subject: scores}                        # modelport stream
writer: {type: stream, subject: scores, broker: {type: redis, url: "redis://cache"}}
```

With `codec: avro` the rows are Avro records (`modelport.streams.avro.AvroWriter`);
its `avro:` options (`registry_url`, `output_subject`, `output_schema`) default, in
`modelport stream`, to the stream's own `avro:` section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import ValidationError

from modelport.config import AvroConfig
from modelport.errors import ConfigError
from modelport.pipeline.base import Frame, Writer
from modelport.pipeline.columns import cells, plain_keys
from modelport.streams.base import Broker
from modelport.streams.codec import Codec, encode

# the consumer-side arguments a broker built only to publish does not use
_PUBLISH_ONLY: dict[str, dict[str, str]] = {
    "redis": {"stream": "", "group": ""},
    "nats": {"stream": "", "subject": "", "durable": "publisher"},
    "kafka": {"topic": "", "group_id": ""},
}


class StreamWriter(Writer):
    """Publishes result rows to `subject`; `columns` picks the ones to send."""

    def __init__(self, subject: str, broker: Broker | Mapping[str, Any] | None = None,
                 codec: Codec | Literal["avro"] = "json",
                 columns: Sequence[str] | None = None,
                 avro: AvroConfig | Mapping[str, Any] | None = None) -> None:
        self.subject = subject
        self.codec = codec
        self.columns = list(columns) if columns else None
        if avro is not None and codec != "avro":
            raise ConfigError(f"stream writer to {subject!r}: avro options are for "
                              f"codec: avro, not {codec}")
        try:
            self.avro = AvroConfig.model_validate(avro) if isinstance(avro, Mapping) else avro
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(map(str, error["loc"]))
            raise ConfigError(f"stream writer to {subject!r}: avro.{where}: "
                              f"{error['msg']}") from None
        self._avro: Any = None  # the AvroWriter, made at start (fastavro is optional)
        self._config = dict(broker) if isinstance(broker, Mapping) else None
        self.broker: Broker | None = broker if isinstance(broker, Broker) else None
        self._owned = False  # a broker built here is closed here; a lent one is not

    def lend(self, broker: Broker, avro: AvroConfig | None = None) -> None:
        """Publish through `broker` (the stream trigger's own) unless configured with one;
        a lent broker is its owner's to start and close. `avro`: the stream's registry
        and output subject, for Avro results without options of their own."""
        if self.broker is None and self._config is None:
            self.broker = broker
        if self.avro is None and self.codec == "avro":
            self.avro = avro

    async def start(self) -> None:
        if self.codec == "avro" and self._avro is None:
            from modelport.streams.avro import AvroWriter

            self._avro = AvroWriter(self.avro or AvroConfig(), self.subject)
        if self.broker is None and self._config is not None:
            from modelport.streams import broker_class

            options = dict(self._config)
            kind = str(options.pop("type", ""))
            cls = broker_class(kind)
            try:
                self.broker = cls(**{**_PUBLISH_ONLY.get(kind, {}), **options})
            except TypeError as exc:
                raise ConfigError(f"stream writer: broker: {exc}") from None
            self._owned = True
        if self.broker is None:
            raise ConfigError(f"stream writer to {self.subject!r} has no broker: give it "
                              "one ({type: redis, url: ...}) outside `modelport stream`")
        if self._owned:
            await self.broker.start()

    async def close(self) -> None:
        if self._owned and self.broker is not None:
            await self.broker.close()
            self.broker = None

    async def write(self, frame: Frame) -> None:
        if not len(frame):
            return
        if self.broker is None or (self.codec == "avro" and self._avro is None):
            await self.start()
        assert self.broker is not None
        names = self.columns or list(frame.columns)
        absent = [n for n in names if n not in frame.columns]
        if absent:
            raise ConfigError(f"stream writer: the results have no column(s) "
                              f"{', '.join(absent)} (they have {', '.join(frame.columns)})")
        keys = plain_keys(frame.keys)
        columns = [cells(frame.columns[n], nested="list") for n in names]
        rows = zip(*columns, strict=True) if columns else ((),) * len(keys)
        if self.codec == "avro":
            payloads = await self._avro.encode(
                [{"id": str(key), **dict(zip(names, row, strict=True))}
                 for key, row in zip(keys, rows, strict=True)])
        else:
            payloads = [encode({"id": key, **dict(zip(names, row, strict=True))}, self.codec)
                        for key, row in zip(keys, rows, strict=True)]
        await self.broker.publish(self.subject, payloads, keys=[str(k) for k in keys])
