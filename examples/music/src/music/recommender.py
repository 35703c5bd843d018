"""The recommender service: `GET /users/{id}/recommendations?k=10`.

A modelport pipeline does the work: retriever = the user's history store, `pre` =
the history as the model's `history` tensor, model = `recommender@production` (a
`FactorModel`, folding the user in from their history on each request), `post` = the
tracks the user played taken out and the list cut to k, writer = the impression log.
The route is a thin adapter: it looks the user up (a user the store does not know
gets an empty history, hence popular tracks, flagged `cold`), runs the pipeline, and
joins the catalogue's titles, artists and genres.

When the model cannot answer (not loaded, overloaded, too slow, failing) the answer
comes from the nightly batch's precomputed top-k for the user, or its popular list,
with `source: "batch"` and the version that computed it; the impression log says so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from modelport import (
    Frame,
    InvalidInput,
    ModelportError,
    NotFound,
    NotReady,
    Pipeline,
    Retriever,
    Service,
)
from modelport.server import JSON
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from music.history import HistoryTensor, entries, filter_played, shown
from music.impressions import ImpressionLog, new_id
from music.store import Track
from music.system import MODEL, TOP_K, System

log = logging.getLogger("music.recommender")

POPULAR = "__popular__"
"""The nightly batch's row for users it has no history for."""
MAX_K = TOP_K


def recommender_pipeline(system: System, service: Service) -> Pipeline:
    return Pipeline(
        "recommender", MODEL, service.dataplane,
        retriever=system.history_retriever(),
        writer=ImpressionLog(system.database, system.table("impressions")),
        pre=HistoryTensor(service, MODEL), post=shown, version_column="model_version")


@dataclass
class Answer:
    user: str
    k: int
    source: str
    version: int | None
    cold: bool
    items: list[str]
    scores: list[float]
    impression: str
    computed_at: float | None = None

    def json(self, catalog: dict[str, Track]) -> dict[str, Any]:
        unknown = Track("", "(not in the catalogue)", "", "")
        return {
            "user": self.user, "k": self.k, "cold": self.cold, "source": self.source,
            "model": {"name": MODEL, "version": self.version},
            **({"computed_at": self.computed_at} if self.computed_at else {}),
            "impression": self.impression,
            "items": [{**catalog.get(i, unknown).as_dict(), "track": i, "score": s}
                      for i, s in zip(self.items, self.scores, strict=True)],
        }


class Recommender:
    """The route's state: the pipeline, the fallback store and the catalogue."""

    def __init__(self, pipeline: Pipeline, topk: Retriever, catalog: dict[str, Track]) -> None:
        self.pipeline = pipeline
        self.topk = topk
        self.catalog = catalog
        self.fallbacks = 0

    @property
    def history(self) -> Retriever:
        assert self.pipeline.retriever is not None
        return self.pipeline.retriever

    @property
    def impressions(self) -> ImpressionLog:
        assert isinstance(self.pipeline.writer, ImpressionLog)
        return self.pipeline.writer

    async def recommend(self, user: str, k: int) -> Answer:
        found = await self.history.get([user])
        frame = found if len(found) else Frame([user], {"history": [None]})
        stored = frame.columns["history"][0]
        impression = new_id()
        frame.columns["k"], frame.columns["impression"] = [k], [impression]
        try:
            scored = await self.pipeline.score(frame)
            await self.pipeline.write(scored)
            if scored.rejects:
                raise ModelportError(scored.rejects[0].reason)
        except InvalidInput:
            raise
        except ModelportError as exc:
            # the model cannot answer: the nightly batch's list, if there is one
            self.fallbacks += 1
            log.warning("recommendations for %s from the nightly batch: %s", user, exc.message)
            played = [e[1] for e in entries(stored)]
            return await self._from_batch(user, k, played, impression, exc)
        row = scored.results.take([0]).records()[0]
        return Answer(user, k, "model", int(row["model_version"]), bool(row["cold"]),
                      row["items"], row["scores"], impression)

    async def _from_batch(self, user: str, k: int, played: list[str], impression: str,
                          error: ModelportError) -> Answer:
        rows = await self.topk.get([user, POPULAR])
        by_key = dict(zip(rows.keys, rows.records(), strict=True))
        record = by_key.get(user) or by_key.get(POPULAR)
        if record is None:
            raise NotReady(f"no recommendations for {user!r}: the model cannot answer "
                           f"({error.message}) and the nightly batch has not run") from error
        items, scores = filter_played(_list(record["items"]), _list(record["scores"]),
                                      played, k)
        version = record.get("model_version")
        answer = Answer(user, k, "batch", None if version is None else int(version),
                        user not in by_key, items, scores, impression,
                        computed_at=record.get("computed_at"))
        await self.impressions.write(Frame([user], {
            "impression": [impression], "items": [items], "cold": [answer.cold],
            "model_version": [answer.version], "source": ["batch"]}))
        return answer


def _list(value: Any) -> list[Any]:
    import orjson

    return list(orjson.loads(value)) if isinstance(value, str | bytes) else list(value)


def parse_k(raw: str | None) -> int:
    if raw is None:
        return 10
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_K:
        raise InvalidInput(f"k must be a whole number from 1 to {MAX_K}, got {raw!r}")
    return int(raw)


def check_user(user: str) -> str:
    if not user or len(user) > 64 or not all(c.isalnum() or c in "._-" for c in user):
        raise InvalidInput(f"user id {user[:80]!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return user


async def recommendations(request: Request) -> Response:
    recommender: Recommender = request.app.state.recommender
    user = check_user(request.path_params["user"])
    k = parse_k(request.query_params.get("k"))
    request.state.model, request.state.route = MODEL, "recommendations"
    started = time.perf_counter()
    answer = await recommender.recommend(user, k)
    request.state.version = answer.version
    body = answer.json(recommender.catalog)
    body["ms"] = round((time.perf_counter() - started) * 1000, 2)
    return JSON(body)


async def history(request: Request) -> Response:
    """The user's recent listens as the recommender sees them, with catalogue info."""
    recommender: Recommender = request.app.state.recommender
    user = check_user(request.path_params["user"])
    n = parse_k(request.query_params.get("n", "20"))
    found = await recommender.history.get([user])
    stored = entries(found.columns["history"][0]) if len(found) else []
    unknown = Track("", "(not in the catalogue)", "", "")
    return JSON({"user": user, "known": bool(stored), "listens": [
        {**recommender.catalog.get(track, unknown).as_dict(), "track": track, "id": lid,
         "ts": ts} for lid, track, ts in stored[:n]]})


async def track(request: Request) -> Response:
    recommender: Recommender = request.app.state.recommender
    found = recommender.catalog.get(request.path_params["track"])
    if found is None:
        raise NotFound(f"unknown track {request.path_params['track']!r}")
    return JSON(found.as_dict())


routes = [
    Route("/users/{user}/recommendations", recommendations, methods=["GET"]),
    Route("/users/{user}/history", history, methods=["GET"]),
    Route("/tracks/{track}", track, methods=["GET"]),
]
