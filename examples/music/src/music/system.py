"""Where the reference system keeps things, in its two modes.

- **embedded** (the default, `music up`): one SQLite file for the catalogue, listens,
  histories, impressions and the nightly top-k; the registry under `.modelport/`; an
  in-process bus between the events service and the realtime worker. Nothing to run
  but one Python process.
- **full** (`music serve …`, `music up --full`): the same services as separate
  processes over PostgreSQL (catalogue, listens, impressions, registry), Redis
  (histories and the nightly top-k, read on every request) and NATS JetStream or
  Redis Streams (listens, from events to the realtime worker).

Every table, Redis key and stream name starts with `prefix`, so that several systems
(tests running side by side) share one database, Redis and broker without meeting.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from modelport import Settings
from modelport.pipeline import (
    RedisRetriever,
    RedisWriter,
    Retriever,
    SqlRetriever,
    SqlWriter,
    Writer,
)
from modelport.streams import Broker, MemoryBroker, MemoryBus

Mode = Literal["embedded", "full"]

MODEL = "music-recommender"
"""The registry name the trainer (music.train) registers under."""
ALIAS = "production"
HISTORY_KEEP = 200
"""Listens kept per user in the history store: the model folds in the most recent of
them (as many as its signature takes), and the service never recommends any of them."""
TOP_K = 50
"""Tracks the nightly batch keeps per user; requests slice the k they ask for."""


@dataclass
class System:
    mode: Mode = "embedded"
    home: Path = Path(".modelport")
    db_url: str | None = None
    """Catalogue, listens, impressions (and, embedded, histories and top-k); default a
    SQLite file under `home/music`."""
    redis_url: str | None = None
    """Full mode: histories and the nightly top-k live here."""
    broker_url: str | None = None
    """Full mode: `nats://…` (JetStream) or `redis://…` (Redis Streams)."""
    registry_url: str | None = None
    """Default: the registry of `home` (a SQLite file)."""
    prefix: str = "music_"
    alias: str = ALIAS
    """The alias the recommender serves and the nightly batch scores with."""
    consumer: str = "realtime-1"
    """The realtime worker's consumer name: a restarted worker under the same name
    reads back what it had fetched and not acknowledged, at once."""
    bus: MemoryBus = field(default_factory=MemoryBus, repr=False)

    def __post_init__(self) -> None:
        if self.mode == "full" and not (self.redis_url and self.broker_url and self.db_url):
            raise ValueError("full mode needs a database URL, a Redis URL and a broker URL")

    @classmethod
    def full(cls, db_url: str, redis_url: str, broker_url: str, **kw: Any) -> System:
        return cls(mode="full", db_url=db_url, redis_url=redis_url, broker_url=broker_url,
                   **kw)

    def with_prefix(self, prefix: str) -> System:
        return replace(self, prefix=prefix)

    # --- where things are -----------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.home / "music"

    @property
    def database(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'music.db'}"

    @property
    def database_display(self) -> str:
        """The database URL without its password, for messages."""
        from sqlalchemy.engine import make_url

        return make_url(self.database).render_as_string(hide_password=True)

    def table(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def model_ref(self) -> str:
        return f"{MODEL}@{self.alias}"

    @property
    def stream(self) -> str:
        return f"{self.prefix}listens"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}listens_dlq"

    def settings(self, **overrides: Any) -> Settings:
        """modelport's settings for a service of this system (registry, home)."""
        values: dict[str, Any] = {"home": self.home}
        if self.registry_url:
            values["registry_url"] = self.registry_url
        return Settings(**{**values, **overrides})

    # --- components -----------------------------------------------------------------

    def history_retriever(self) -> Retriever:
        """The user's recent listens: a JSON list of [id, track, ts], newest first."""
        if self.redis_url:
            return RedisRetriever(self.redis_url, prefix=f"{self.prefix}history:",
                                  format="json")
        return SqlRetriever(self.database, table=self.table("history"), key="user_id",
                            columns=["history"])

    def topk_retriever(self) -> Retriever:
        if self.redis_url:
            return RedisRetriever(self.redis_url, prefix=f"{self.prefix}topk:", format="json")
        return SqlRetriever(self.database, table=self.table("topk"), key="user_id")

    def topk_writer(self) -> Writer:
        columns = ["items", "scores", "model_version", "computed_at"]
        if self.redis_url:
            return RedisWriter(self.redis_url, prefix=f"{self.prefix}topk:", format="json")
        return SqlWriter(self.database, table=self.table("topk"), key="user_id", columns=columns)

    def broker(self, group: str = "realtime") -> Broker:
        """The listens stream: a consumer group `group` on it, and its publisher."""
        url = self.broker_url
        if url is None:
            return MemoryBroker(self.bus, self.stream, ack_wait=5.0)
        if url.startswith("nats://"):
            from modelport.streams import JetStreamBroker

            # ack_wait: how long a listen fetched by a worker that died waits to come back
            return JetStreamBroker(url, self.stream, self.stream, durable=f"{self.prefix}{group}",
                                   ack_wait=5.0)
        if url.startswith(("redis://", "rediss://")):
            from modelport.streams import RedisStreamsBroker

            return RedisStreamsBroker(url, self.stream, group=f"{self.prefix}{group}",
                                      consumer=self.consumer, claim_idle_ms=5_000)
        raise ValueError(f"broker URL {url!r}: expected nats://… or redis://…")


def single_threaded_blas() -> None:
    """One BLAS thread for the whole process, for serving and batch scoring.

    A request's scores are one small matrix-vector product, and the batcher already runs
    model calls side by side in threads; a multithreaded BLAS under each of them
    oversubscribes the cores (the nightly batch runs several times slower with two BLAS
    threads than with one).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")

