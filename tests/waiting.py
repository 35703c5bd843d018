"""Waiting for something to happen, in tests: poll a condition up to a deadline.

For ordering a test by what the code does (a queue filled, a row written, a metric
moved) rather than by a guess at how long it takes. The deadline is generous (a loaded
CI machine); a condition that holds returns at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_for(check: Callable[[], object], timeout: float = 60, what: str = "condition",
             every: float = 0.02) -> None:
    """Return once `check()` is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


async def until(check: Callable[[], object], timeout: float = 60,
                what: str = "condition") -> None:
    """`wait_for` on the event loop: other tasks run between checks."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.005)
