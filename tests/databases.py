"""Databases for the stores' tests: each test gets a fresh PostgreSQL database on the suite's server
(the postgres_server fixture, tests/conftest.py) or a SQLite file of its own."""

from __future__ import annotations

import itertools

import pytest
import sqlalchemy as sa

_databases = itertools.count()


def new_postgres_database(admin_url: str, prefix: str) -> str:
    """A fresh, empty database on the server of `admin_url`; its URL."""
    name = f"{prefix}_{next(_databases)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return admin_url.replace("/postgres?", f"/{name}?")


def database_url_for(request: pytest.FixtureRequest, prefix: str, sqlite_url: str) -> str:
    """For a fixture parametrised over ["sqlite", "postgresql"]: `sqlite_url`, or a fresh
    PostgreSQL database named after `prefix`."""
    if request.param == "sqlite":
        return sqlite_url
    return new_postgres_database(request.getfixturevalue("postgres_server"), prefix)
