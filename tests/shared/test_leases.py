"""cascade.database.Lease on both databases: one holder at a time, even when several take it at the
same instant; a holder that stops renewing loses it to the next taker once it expires; a release
hands it over at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from cascade import database
from tests.databases import database_url_for


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    url = database_url_for(request, "leases", database.sqlite_url(tmp_path / "leases.sqlite3"))
    created = database.engine(url, writer=True)
    metadata = sa.MetaData()
    database.lease_table(metadata)
    metadata.create_all(created)
    yield created
    created.dispose()


def _lease(engine: sa.Engine, seconds: float = 30.0, name: str = "outbox") -> database.Lease:
    return database.Lease(engine, database.lease_table(sa.MetaData()), name, seconds)


def _eventually(check: Callable[[], bool], budget: float = 15.0) -> bool:
    """Poll `check()` until it is true or `budget` seconds pass (a retry budget, not an assertion
    on time)."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_one_holder_at_a_time_and_the_holder_renews(engine: sa.Engine) -> None:
    first, second = _lease(engine), _lease(engine)
    assert first.acquire() and not second.acquire()
    assert first.renew() and first.acquire()  # renewing, or taking again, what it holds
    assert not second.renew()  # it never held it
    assert first.holder_now() == second.holder_now() == first.holder
    assert _lease(engine, name="webhooks").acquire()  # another job's lease is another row


def test_replicas_taking_the_lease_at_the_same_instant_get_one_holder(engine: sa.Engine) -> None:
    leases = [_lease(engine) for _ in range(6)]
    start = threading.Barrier(len(leases))

    def take(lease: database.Lease) -> bool:
        start.wait()
        return lease.acquire()

    with ThreadPoolExecutor(len(leases)) as pool:
        taken = list(pool.map(take, leases))
    assert taken.count(True) == 1
    assert leases[0].holder_now() == leases[taken.index(True)].holder


def test_a_holder_that_stops_renewing_loses_the_lease_when_it_expires(engine: sa.Engine) -> None:
    stalled, successor = _lease(engine, seconds=0.5), _lease(engine, seconds=0.5)
    assert stalled.acquire()
    assert _eventually(successor.acquire)  # once the stalled holder's term is over
    assert successor.holder_now() == successor.holder
    # The stalled holder finds it lost the lease, and cannot take it back while it is renewed.
    assert not stalled.renew() and not stalled.acquire()


def test_a_lapsed_lease_is_not_renewed_even_when_nobody_took_it(engine: sa.Engine) -> None:
    lease = _lease(engine, seconds=0.3)
    assert lease.acquire()
    assert _eventually(lambda: lease.holder_now() is None)
    # What the holder read under its old term may be stale: only taking it anew is allowed.
    assert not lease.renew() and lease.acquire()


def test_a_released_lease_is_taken_at_once(engine: sa.Engine) -> None:
    leaving, staying = _lease(engine), _lease(engine)
    assert leaving.acquire() and not staying.acquire()
    leaving.release()
    assert leaving.holder_now() is None and staying.acquire()
    leaving.release()  # a release by a replica that no longer holds it changes nothing
    assert staying.holder_now() == staying.holder
