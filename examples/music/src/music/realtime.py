"""The realtime worker: listens from the stream folded into users' histories.

A modelport `StreamWorker` over a pipeline without a model, run by a `StreamRunner` on
the server's service (it opens and closes the pipeline and the broker, and keeps the
stream's lag gauge): each batch of listens goes to the history store's fold writer, and
is acknowledged only once written. The
recommender folds the user in from that history on each request, so the next
recommendation reflects a listen as soon as the worker has written it (well within a
second: the worker waits at most `FETCH_TIMEOUT_S` for a batch, and a fold is one
round trip).

A worker killed mid-batch loses nothing: what it fetched and did not acknowledge comes
back (to it, restarted under the same consumer name, or to another worker), and the
fold merges by listen id, so a listen folded twice is kept once.
"""

from __future__ import annotations

from modelport import Pipeline, Service, Writer
from modelport.server import JSON
from modelport.streams import StreamRunner, StreamWorker
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from music.history import RedisHistory, SqlHistory
from music.system import System

FETCH_TIMEOUT_S = 0.2
BATCH = 256


def history_writer(system: System) -> Writer:
    if system.redis_url:
        return RedisHistory(system.redis_url, prefix=f"{system.prefix}history:")
    return SqlHistory(system.database, system.table("history"))


def realtime_runner(system: System, service: Service) -> StreamRunner:
    """The worker on `service`: `await runner.run()` opens the pipeline and the broker,
    processes until `runner.stop()`, and closes both."""
    pipeline = Pipeline("realtime", None, service.dataplane, writer=history_writer(system))
    worker = StreamWorker(pipeline, system.broker("realtime"),
                          dead_letter_subject=system.dead_letters, batch_size=BATCH,
                          fetch_timeout=FETCH_TIMEOUT_S, metrics=service.metrics,
                          max_backoff=5.0)
    return StreamRunner(service, worker, where=system.stream)


async def status(request: Request) -> Response:
    """What the worker has done, and what waits for it (the stream's lag)."""
    worker: StreamWorker = request.app.state.worker
    stats = worker.stats
    try:
        lag = await worker.broker.lag()
    except Exception as exc:  # the broker is down: say so, the probe still answers
        lag = None
        error: str | None = str(exc)
    else:
        error = None
    return JSON({"processed": stats.processed, "dead_lettered": stats.dead_lettered,
                 "redeliveries": stats.redeliveries, "batches": stats.batches,
                 "lag": lag, "stopping": worker.stopping,
                 **({"error": error} if error else {})})


routes = [Route("/worker", status, methods=["GET"])]
