"""A service's metadata database behind SQLAlchemy Core: SQLite (WAL) by default, PostgreSQL by URL.

The registry started this shape; ingest and the monitor share it. A store opens two engines on
SQLite, a writer whose transactions take the write lock at BEGIN (so concurrent writers queue there
instead of failing at their first write) and a reader that never blocks (WAL); on PostgreSQL one
engine does both, and writers serialise on the rows they lock. Alembic migrations bring the schema to
the newest revision when a store opens, on its own connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite

__all__ = ["engine", "insert", "migrate", "run_alembic_environment", "sqlite_url"]


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def engine(url: str, writer: bool) -> sa.Engine:
    """An engine for `url`; on SQLite, `writer` decides whether a transaction takes the write lock
    at BEGIN (BEGIN IMMEDIATE) or reads (BEGIN)."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    path = sa.make_url(url).database
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    created = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(created, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @sa.event.listens_for(created, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return created


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
