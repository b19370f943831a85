"""Readings kept fresh in the background, so a page shows the latest at once instead of waiting
for its reads on every view (the Loop page's health probes and Kafka reads cost seconds).

One `Feed` per kind of reading and console process, shared by every viewer: a daemon thread reads
every `every` seconds while someone looked within `idle_after` seconds, then sleeps until asked
again. A failed read keeps the last good value and says why it is not newer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Reading(Generic[T]):
    """The latest value read (None before a read succeeded), when, and why a newer one failed."""

    value: T | None
    read_at: float  # time.time() of the read the value comes from
    tried_at: float  # time.time() of the latest read, failed or not
    error: str = ""


class Feed(Generic[T]):
    def __init__(self, name: str, read: Callable[[], T], *, every: float, idle_after: float = 60.0) -> None:
        self.name = name
        self._read = read
        self._every = every
        self._idle_after = idle_after
        self._changed = threading.Condition()
        self._latest: Reading[T] | None = None
        self._asked = time.monotonic()
        self._thread = threading.Thread(target=self._poll, name=f"feed-{name}", daemon=True)
        self._thread.start()

    def latest(self, wait: float) -> Reading[T] | None:
        """The newest reading; while it is older than two periods (the first view, or the first
        after the feed slept), wait up to `wait` seconds for a fresh one."""
        deadline = time.monotonic() + wait
        with self._changed:
            self._asked = time.monotonic()
            self._changed.notify_all()  # wakes a sleeping poller
            while not self._fresh() and (remaining := deadline - time.monotonic()) > 0:
                self._changed.wait(remaining)
            return self._latest

    def _fresh(self) -> bool:
        # By the latest try, not the latest success: while reads fail, views must not wait each time.
        return self._latest is not None and time.time() - self._latest.tried_at < 2 * self._every

    def _poll(self) -> None:
        while True:
            with self._changed:
                while time.monotonic() - self._asked > self._idle_after:
                    self._changed.wait()  # nobody is looking: read nothing until asked
            started = time.time()
            try:
                reading: Reading[T] = Reading(self._read(), started, started)
            except Exception as error:  # shown on the page; the feed goes on
                previous = self._latest
                reading = Reading(
                    previous.value if previous is not None else None,
                    previous.read_at if previous is not None else started,
                    started,
                    f"{type(error).__name__}: {error}" if str(error) else type(error).__name__,
                )
            with self._changed:
                self._latest = reading
                self._changed.notify_all()
            time.sleep(max(0.0, self._every - (time.time() - started)))
