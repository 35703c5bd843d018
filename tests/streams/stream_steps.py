"""Pipeline steps the stream command tests load by import path in worker processes."""

from __future__ import annotations

import asyncio
import os
import time

from modelport.pipeline import Frame, Writer


def slow(frame: Frame) -> Frame:
    """Takes MP_TEST_STEP_S seconds per batch (default 0.3): a batch stays in flight."""
    time.sleep(float(os.environ.get("MP_TEST_STEP_S", "0.3")))
    return frame


class SlowWriter(Writer):
    """A sink that takes MP_TEST_STEP_S seconds per write, without blocking the loop
    (a database that hangs)."""

    async def write(self, frame: Frame) -> None:
        await asyncio.sleep(float(os.environ.get("MP_TEST_STEP_S", "0.3")))
