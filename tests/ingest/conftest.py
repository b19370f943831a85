"""Ingest's metadata runs on both of its databases: SQLite (the default) and a real PostgreSQL server
(tests/conftest.py's postgres_server); each test gets a database of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.database import sqlite_url
from tests.databases import database_url_for


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the store keeps its metadata; on SQLite the file a store under tmp_path uses by default."""
    return database_url_for(request, "ingest", sqlite_url(tmp_path / "ingest.sqlite3"))
