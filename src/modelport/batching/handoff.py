"""The queue between an event loop and the threads that take work from it."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    """The queue between the event loop and the lanes.

    The loop appends without waking anyone; a lane with nothing to do sleeps until the
    end of the loop's turn in which work arrived (one wake-up per turn, scheduled with
    `call_soon`), so it takes what that turn admitted as one batch; a lane that ends a
    batch takes what queued meanwhile without the loop. Waking a sleeping thread for
    every request, as a `queue.Queue` does, costs an OS context switch per request,
    and on a server's one core each takes the core from the loop mid-turn."""

    def __init__(self, capacity: int) -> None:
        self.items: deque[T] = deque()
        self.capacity = capacity
        self.loop: asyncio.AbstractEventLoop | None = None
        self._work = threading.Event()
        self._idle = 0  # lanes asleep in get()
        self._counting = threading.Lock()
        self._kicked = False

    @property
    def sleeping(self) -> int:
        """Lanes asleep in `get()`."""
        return self._idle

    @property
    def full(self) -> bool:
        return len(self.items) >= self.capacity

    def put(self, item: T, *, always: bool = False) -> bool:
        """On the loop: queue `item`; False when full (unless `always`)."""
        if not always and len(self.items) >= self.capacity:
            return False
        self.items.append(item)
        if self._idle and not self._kicked:
            assert self.loop is not None
            self._kicked = True
            self.loop.call_soon(self._kick)
        return True

    def _kick(self) -> None:
        self._kicked = False
        self._work.set()

    def get_nowait(self) -> T | None:
        try:
            return self.items.popleft()
        except IndexError:
            return None

    def get(self) -> T:
        """On a lane: the next item, sleeping while there is none."""
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            self._work.clear()
            with self._counting:
                self._idle += 1
            try:
                if not self.items:  # put() may have come before `_idle` was counted
                    self._work.wait()
            finally:
                with self._counting:
                    self._idle -= 1
