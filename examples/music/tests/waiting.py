"""Waiting for something to happen, in tests: poll a condition up to a deadline (a
generous one: a loaded CI machine), rather than sleep a guess at how long it takes."""

from __future__ import annotations

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
