"""The registry's tests run on both of its databases: SQLite (the default) and a real PostgreSQL
server, started from the `pgserver` wheel once per run; each test gets a database of its own."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cascade.services.registry.store import sqlite_url

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's admin URL (over its Unix socket)."""
    pgserver = pytest.importorskip("pgserver")
    root = tmp_path_factory.mktemp("pg")
    server: Any = pgserver.get_server(root, cleanup_mode="stop")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={root}"
    finally:
        server.cleanup()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "registry.sqlite3")
    admin_url: str = request.getfixturevalue("postgres_server")
    name = f"registry_{next(_databases)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return admin_url.replace("/postgres?", f"/{name}?")
