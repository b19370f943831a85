"""Alembic environment: ingest runs migrations itself at start-up on its own connection
(cascade.database.migrate); `alembic -c services/ingest/alembic.ini` works for humans."""

from cascade.database import run_alembic_environment
from cascade.services.ingest.tables import metadata

run_alembic_environment(metadata)
