"""Feed: one background reader, the latest value at once, errors kept beside the last good value."""

from __future__ import annotations

import itertools
import threading

from cascade.console.feeds import Feed


def test_the_first_view_waits_for_a_reading_and_later_ones_see_newer_values() -> None:
    counter = itertools.count(1)
    feed = Feed("count", lambda: next(counter), every=0.05)
    first = feed.latest(wait=5)
    assert first is not None and first.value is not None and first.error == ""
    later = feed.latest(wait=5)
    while later is not None and later.value == first.value:
        later = feed.latest(wait=5)
    assert later is not None and later.value is not None and later.value > first.value


def test_a_failed_read_keeps_the_last_good_value_and_says_why() -> None:
    fail = threading.Event()

    def read() -> str:
        if fail.is_set():
            raise ConnectionError("broker down")
        return "lag 0"

    feed = Feed("flaky", read, every=0.05)
    good = feed.latest(wait=5)
    assert good is not None and good.value == "lag 0"
    fail.set()
    reading = feed.latest(wait=5)
    while reading is not None and not reading.error:
        reading = feed.latest(wait=5)
    assert reading is not None
    assert reading.value == "lag 0" and reading.error == "ConnectionError: broker down"
    assert good.read_at <= reading.read_at < reading.tried_at


def test_a_feed_nobody_looks_at_stops_reading_until_asked_again() -> None:
    reads = [0]

    def read() -> int:
        reads[0] += 1
        return reads[0]

    feed = Feed("idle", read, every=0.01, idle_after=0.05)
    feed.latest(wait=5)
    threading.Event().wait(0.3)  # well past idle_after: the poller went to sleep
    asleep = reads[0]
    threading.Event().wait(0.3)  # 30 periods: a poller still reading would count on
    assert reads[0] == asleep
    resumed = feed.latest(wait=5)  # asking wakes it, and the stale reading is not taken
    assert resumed is not None and resumed.value is not None and resumed.value > asleep
