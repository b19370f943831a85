"""Alembic environment: the registry runs migrations itself at start-up on its own connection
(cascade.database.migrate); `alembic -c services/registry/alembic.ini` works for humans."""

from cascade.database import run_alembic_environment
from cascade.services.registry.schema import metadata

run_alembic_environment(metadata)
