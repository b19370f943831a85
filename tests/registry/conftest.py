"""The registry's tests run on both of its databases: SQLite (the default) and a real PostgreSQL
server (tests/conftest.py's postgres_server); each test gets a database of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.services.registry.store import sqlite_url
from tests.databases import database_url_for


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(request, "registry", sqlite_url(tmp_path / "registry.sqlite3"))
