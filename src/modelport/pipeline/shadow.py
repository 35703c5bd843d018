"""A pipeline's shadow side: the shadow's answers to the pipeline's rows, written.

With `shadow_writer:` on a pipeline whose model has a shadow policy, the rows of each
call the primary answered (a batch job's chunk, a stream worker's batch, an HTTP run)
are scored by the shadow too, and its results (the same keys and pass-through
columns, the shadow's outputs, `version_column` the shadow's version, `post` applied)
go to that writer: a side table or a side sink. The data plane hands the pipeline the
shadow's call instead of queueing it, so no row is scored twice; the call is compared,
counted and logged to the prediction log as every shadow call is
(`ShadowRunner.score`).

The shadow never fails the primary: a shadow that raises or times out, a `post` that
fails on its answer, a side writer that refuses it, each leaves those rows out of the
side, counted (`modelport_shadow_calls_total`, outcome `error` or `timeout` for the
shadow, `unwritten` for an answer not written) and logged. Batch jobs and stream
workers await the side with the primary's write (`SideCall` in `Scored.shadow`, done
by `Pipeline.write`), so the side holds every row the shadow could score (and no row
the primary did not write); an HTTP run answers first and leaves the side to a
background task (`ShadowSide.later`), at most `SIDE_IN_FLIGHT` at once per
pipeline (beyond: dropped, counted), awaited when the pipeline closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.dataplane import DataPlane
from modelport.errors import ModelportError
from modelport.pipeline.base import Frame, Key, Writer
from modelport.traffic import ShadowCall

log = logging.getLogger("modelport.pipeline")

SIDE_IN_FLIGHT = 100
"""An HTTP run's sides scored and written in the background at once, per pipeline;
beyond this a side is dropped (counted) rather than pile up."""


@dataclass
class SideCall:
    """The shadow's share of a scored frame: its call, and the rows it stands for."""

    call: ShadowCall
    keys: list[Key]
    passed: dict[str, Any]
    """The pass-through columns of those rows (the primary's results have them too)."""


class ShadowSide:
    """Scores a pipeline's `SideCall`s with the shadow and writes the results."""

    def __init__(self, pipeline: str, dataplane: DataPlane, writer: Writer, *,
                 outputs: list[str] | None, version_column: str | None,
                 post: Callable[[Frame], Frame] | None) -> None:
        self.pipeline = pipeline
        self.dataplane = dataplane
        self.writer = writer
        self.outputs = outputs
        self.version_column = version_column
        self.post = post
        self._later: set[asyncio.Task[None]] = set()

    def scoring(self, side: SideCall) -> asyncio.Task[Frame | None]:
        """Start scoring `side` (it never raises): its results, or None."""
        return asyncio.create_task(self._score(side), name=f"shadow-{self.pipeline}")

    async def write(self, side: SideCall, results: Frame | None) -> None:
        """Write the shadow's results; a failure is counted and logged, never raised."""
        if results is None or not len(results):
            return
        try:
            await self.writer.write(results)
        except Exception as exc:
            self.dataplane.shadows.count(side.call, "unwritten")
            self._failed(side, f"the shadow_writer failed: {_reason(exc)}")

    async def run(self, side: SideCall) -> None:
        try:
            await self.write(side, await self._score(side))
        except Exception:  # a bug here must not go unseen in a background task
            log.exception("pipeline %s: shadow %s failed", self.pipeline, side.call.policy.ref)

    def later(self, side: SideCall) -> None:
        """Score and write `side` in the background (an HTTP run does not wait)."""
        if len(self._later) >= SIDE_IN_FLIGHT:
            self.dataplane.shadows.count(side.call, "dropped")
            return
        task = asyncio.create_task(self.run(side), name=f"shadow-{self.pipeline}")
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def drain(self) -> None:
        """Wait for the background sides (each bounded by the shadow's `timeout_s`
        and its write)."""
        while self._later:
            await asyncio.gather(*self._later, return_exceptions=True)

    async def _score(self, side: SideCall) -> Frame | None:
        call = side.call
        outputs, reason = await self.dataplane.shadows.score(call)
        if outputs is None:
            self._failed(side, reason)
            return None
        try:
            if self.outputs:
                missing = [o for o in self.outputs if o not in outputs]
                if missing:
                    raise ModelportError(f"the shadow has no output {missing[0]!r}")
                outputs = {o: outputs[o] for o in self.outputs}
            columns = {**side.passed, **outputs}
            if self.version_column:
                columns[self.version_column] = np.full(len(side.keys), call.target.version,
                                                       np.int64)
            results = Frame(side.keys, columns)
            return self.post(results) if self.post is not None else results
        except Exception as exc:  # a shadow's odd answer fails only its side
            self.dataplane.shadows.count(call, "unwritten")
            self._failed(side, _reason(exc))
            return None

    def _failed(self, side: SideCall, reason: str) -> None:
        log.warning("pipeline %s: shadow %s: %d rows not in the shadow_writer: %s",
                    self.pipeline, side.call.policy.ref, len(side.keys), reason)


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ModelportError) else f"{type(exc).__name__}: {exc}"

