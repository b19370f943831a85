"""A service's metadata database behind SQLAlchemy Core: SQLite (WAL) by default, PostgreSQL by URL.

The registry started this shape; ingest and the monitor share it. A store opens two engines on
SQLite, a writer whose transactions take the write lock at BEGIN (so concurrent writers queue there
instead of failing at their first write) and a reader that never blocks (WAL); on PostgreSQL one
engine does both, and writers serialise on the rows they lock. Alembic migrations bring the schema to
the newest revision when a store opens, on its own connection. A `Lease` lets one of the replicas
sharing a database do a job at a time (the outbox relays: one publishes, in order).
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite

__all__ = [
    "Lease",
    "engine",
    "holder_name",
    "insert",
    "lease_table",
    "migrate",
    "run_alembic_environment",
    "sqlite_url",
]


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def engine(url: str, writer: bool, sync_each_commit: bool = True) -> sa.Engine:
    """An engine for `url`; on SQLite, `writer` decides whether a transaction takes the write lock
    at BEGIN (BEGIN IMMEDIATE) or reads (BEGIN).

    `sync_each_commit` (the default) flushes every commit to disk before it returns. Without it a
    commit survives the process being killed, at any point, but the last moments of commits may be
    lost if the machine itself goes down (SQLite WAL with synchronous=NORMAL; PostgreSQL with
    synchronous_commit=off), and nothing is ever corrupted. It is for data that is a sample of a
    stream, written many times a second, where an fsync per commit (1.4 ms on a quiet disk, 20-90 ms
    on a busy one) would bound the rate: the monitor's windows."""
    if not url.startswith("sqlite"):
        options = {} if sync_each_commit else {"options": "-c synchronous_commit=off"}
        return sa.create_engine(url, pool_pre_ping=True, connect_args=options)
    path = sa.make_url(url).database
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    created = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(created, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL" if sync_each_commit else "PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(created, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return created


# Switching a new file to WAL needs it alone for a moment, and SQLite's busy timeout does not wait for
# that: replicas opening one new file at once see "database is locked". They retry within this budget.
_WAL_SWITCH_SECONDS = 30.0


def _switch_to_wal(cursor: Any) -> None:
    deadline = time.monotonic() + _WAL_SWITCH_SECONDS
    delay = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def migrate(engine: sa.Engine, script_location: Path) -> None:
    """Bring the schema to the newest Alembic revision under `script_location` (a no-op when it is
    there already). Two processes starting at once on PostgreSQL queue on an advisory lock, so one
    migrates and the other finds the schema current."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            key = f"cascade-migrate:{script_location.parent.name}"
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(key))))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def insert(connection: sa.Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has ON CONFLICT DO NOTHING / DO UPDATE on both databases."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def run_alembic_environment(metadata: sa.MetaData) -> None:
    """The body of a service's migrations/env.py: migrate on the connection `migrate` hands over
    (a service at start-up), or on one opened from `-x url=...` or the ini's sqlalchemy.url (a person
    running `alembic -c services/<name>/alembic.ini`)."""
    from alembic import context  # only inside an Alembic run is `context` configured

    def run_on(connection: sa.Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        )
        with context.begin_transaction():
            context.run_migrations()

    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    with sa.create_engine(url or "").begin() as opened:
        run_on(opened)


def lease_table(metadata: sa.MetaData) -> sa.Table:
    """The `leases` table of a service's database: one row per job (`outbox`, `webhooks`), naming
    the replica that holds it and until when, in seconds since the epoch on the database's clock
    (so replicas on different machines agree on when a lease has expired)."""
    return sa.Table(
        "leases",
        metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(256), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def holder_name() -> str:
    """A name for one lease holder: host and process, made unique by a random suffix (two relays
    in one process are two holders)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _database_clock(connection: sa.Connection) -> sa.ColumnElement[float]:
    """The database's time now, in seconds since the epoch."""
    if connection.dialect.name == "postgresql":
        return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float)
    return (sa.func.julianday("now") - 2440587.5) * 86400.0  # the Julian day of 1970-01-01


class Lease:
    """A job that one of the replicas sharing a database does at a time: whoever takes the lease
    holds it for `seconds`, renewing it while it works; a holder that dies or hangs lets it lapse,
    and another replica takes it then.

    Taking and renewing are one atomic statement on both databases: UPDATE ... WHERE the lease is
    ours or expired (SQLite runs it under its write lock; PostgreSQL re-checks the condition on the
    row it has locked), or, for the very first holder, INSERT ... ON CONFLICT DO NOTHING.

    A lease is not a lock: a holder paused past its expiry (a stalled process, a call hanging
    longer than the lease) may act once more after another replica took over. What a lease guards
    must tolerate that; the outbox does, as its delivery is at least once."""

    def __init__(
        self, engine: sa.Engine, table: sa.Table, name: str, seconds: float, holder: str = ""
    ) -> None:
        if seconds <= 0:
            raise ValueError(f"a lease lasts a positive time, not {seconds} s")
        self.engine = engine
        self.table = table
        self.name = name
        self.seconds = seconds
        self.holder = holder or holder_name()
        # When (time.monotonic) the last successful take or renewal started: the database's expiry
        # is at least `seconds` after it.
        self._renewed_at = -math.inf
        # A relay renews from worker threads, at times two at once (its loop, an announcement's
        # flush): one claim or release at a time keeps `_renewed_at` true to the database.
        self._claiming = threading.Lock()

    def fresh(self, spent: float = 1 / 3) -> bool:
        """Held and renewed less than `spent` of its term ago (by default a third, so held for two
        thirds of it more): no need to ask the database."""
        return time.monotonic() < self._renewed_at + self.seconds * spent

    def acquire(self) -> bool:
        """Take the lease if it is free or expired, or renew it if this holder has it; True if it
        is held now, for at least two thirds of its term."""
        return self._claim(take=True)

    def renew(self) -> bool:
        """Renew the lease if this holder has held it without a break since it took it; False if
        it lapsed meanwhile, even if nobody else took it (what was read under it may be stale)."""
        return self._claim(take=False)

    def release(self) -> None:
        """Let the lease go now (a replica stopping), so another need not wait for it to expire."""
        t = self.table
        with self._claiming, self.engine.begin() as db:
            self._renewed_at = -math.inf
            db.execute(
                t.update().where(t.c.name == self.name, t.c.holder == self.holder).values(expires_at=0.0)
            )

    def holder_now(self) -> str | None:
        """Who holds the lease now (None: nobody, or it has expired)."""
        t = self.table
        with self.engine.connect() as db:
            found = db.execute(
                sa.select(t.c.holder).where(t.c.name == self.name, t.c.expires_at >= _database_clock(db))
            ).scalar_one_or_none()
        return None if found is None else str(found)

    def _claim(self, take: bool) -> bool:
        with self._claiming:
            return self._claim_alone(take)

    def _claim_alone(self, take: bool) -> bool:
        if self.fresh():
            return True
        started = time.monotonic()
        t = self.table
        with self.engine.begin() as db:
            now = _database_clock(db)
            ours = sa.and_(t.c.holder == self.holder, t.c.expires_at >= now)
            claimable = sa.or_(ours, t.c.expires_at < now) if take else ours
            held = (
                db.execute(
                    t.update()
                    .where(t.c.name == self.name, claimable)
                    .values(holder=self.holder, expires_at=now + self.seconds)
                ).rowcount
                == 1
            )
            if not held and take:  # nobody has ever held it: the first to insert its row does
                inserted = db.execute(
                    insert(db, t)
                    .values(name=self.name, holder=self.holder, expires_at=now + self.seconds)
                    .on_conflict_do_nothing(index_elements=["name"])
                    .returning(t.c.name)  # psycopg reports no rowcount for this INSERT
                )
                held = inserted.first() is not None
        self._renewed_at = started if held else -math.inf
        return held
