"""The impression log: what the recommender showed, to whom, from which model version.

It is the recommender pipeline's writer. A request must not wait for a database
commit (SQLite takes one writer at a time, and 16 concurrent requests would queue on
it), so rows are buffered and written behind, in one upsert per flush, by a background
task: every `interval_s`, sooner when `max_rows` are waiting. Rows are keyed by an
impression id, so a flush retried after an outage writes each row once. What is still
buffered when the process is killed is lost (an impression log can afford that; the
listens, which cannot, are written before the events service answers). A buffer that
an outage has filled drops new rows and counts them, rather than growing without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from modelport import ModelportError
from modelport.pipeline import Frame, SqlWriter, Writer

log = logging.getLogger("music.impressions")

COLUMNS = ["user_id", "ts", "source", "model_version", "cold", "items"]


def new_id() -> str:
    return uuid.uuid4().hex


class ImpressionLog(Writer):
    def __init__(self, url: str, table: str, *, interval_s: float = 0.5,
                 max_rows: int = 500, max_buffer: int = 100_000) -> None:
        self.sql = SqlWriter(url, table, key="id", columns=COLUMNS)
        self.interval_s, self.max_rows, self.max_buffer = interval_s, max_rows, max_buffer
        self.dropped = 0
        self._rows: list[tuple[str, dict[str, Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sql.start()
        self._task = asyncio.create_task(self._flusher(), name="impression-log")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(ModelportError):
            await self.flush()
        await self.sql.close()

    async def check(self) -> None:
        await self.sql.check()

    async def write(self, frame: Frame) -> None:
        """Queue the shown lists (keys: users; columns: impression, items, cold,
        model_version and, for answers not from the model, source)."""
        now = time.time()
        cols = frame.columns
        n = len(frame)
        sources = cols.get("source", ["model"] * n)
        colds = cols.get("cold", [None] * n)
        versions = cols.get("model_version", [None] * n)
        impressions = cols.get("impression", [None] * n)
        for row, user in enumerate(frame.keys):
            if len(self._rows) >= self.max_buffer:
                self.dropped += 1
                continue
            version = versions[row]
            self._rows.append((str(impressions[row] or new_id()), {
                "user_id": str(user), "ts": now, "source": str(sources[row]),
                "model_version": None if version is None else int(version),
                "cold": None if colds[row] is None else bool(colds[row]),
                "items": list(cols["items"][row]),
            }))
        if len(self._rows) >= self.max_rows:
            self._wake.set()

    async def flush(self) -> int:
        rows, self._rows = self._rows, []
        if not rows:
            return 0
        frame = Frame([k for k, _ in rows], {c: [r[c] for _, r in rows] for c in COLUMNS})
        try:
            await self.sql.write(frame)
        except ModelportError:
            self._rows = rows + self._rows  # kept for the next flush (bounded by max_buffer)
            raise
        return len(rows)

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            try:
                await self.flush()
            except ModelportError as exc:
                log.warning("impression log not written, retrying: %s", exc.message)
