"""`cascade.database.engine(..., sync_each_commit=False)`, which the monitor's store uses: the
session really runs without a flush per commit (SQLite synchronous=NORMAL, PostgreSQL
synchronous_commit=off), and what a writer committed before being SIGKILLed is there after, on both.
(A machine going down is the case it gives up; that cannot be tested here.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from cascade import database
from tests.databases import new_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return database.sqlite_url(tmp_path / "durability.sqlite3")
    return new_postgres_database(request.getfixturevalue("postgres_server"), "durability")


def _sync_setting(engine: sa.Engine) -> str:
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            return {0: "off", 1: "normal", 2: "full", 3: "extra"}[
                connection.exec_driver_sql("PRAGMA synchronous").scalar_one()
            ]
        return str(connection.exec_driver_sql("SHOW synchronous_commit").scalar_one())


def test_an_engine_syncs_each_commit_unless_told_not_to(url: str) -> None:
    syncing = database.engine(url, writer=True)
    lazy = database.engine(url, writer=True, sync_each_commit=False)
    try:
        assert _sync_setting(syncing) in ("full", "on")
        assert _sync_setting(lazy) in ("normal", "off")
    finally:
        syncing.dispose()
        lazy.dispose()


WRITER = textwrap.dedent(
    """
    import os, sys, time
    import sqlalchemy as sa
    from cascade import database

    engine = database.engine(sys.argv[1], writer=True, sync_each_commit=False)
    with engine.begin() as db:
        db.exec_driver_sql("CREATE TABLE rows (n INTEGER PRIMARY KEY)")
    for n in range(200):
        with engine.begin() as db:
            db.execute(sa.text("INSERT INTO rows (n) VALUES (:n)"), {"n": n})
        print(n, flush=True)  # acknowledged: committed
    time.sleep(60)  # killed here, or earlier
    """
)


def test_what_a_writer_without_per_commit_sync_acknowledged_survives_its_sigkill(url: str) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert writer.stdout is not None
    acknowledged = -1
    try:
        for line in writer.stdout:
            acknowledged = int(line)
            if acknowledged == 120:  # mid-stream, commits still going on
                break
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert acknowledged == 120
    reader = database.engine(url, writer=False)
    try:
        with reader.connect() as db:
            stored = [row[0] for row in db.exec_driver_sql("SELECT n FROM rows ORDER BY n")]
    finally:
        reader.dispose()
    assert stored[: acknowledged + 1] == list(range(acknowledged + 1))
