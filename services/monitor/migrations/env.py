"""Alembic environment: the monitor runs migrations itself at start-up on its own connection
(cascade.database.migrate); `alembic -c services/monitor/alembic.ini` works for humans."""

from cascade.database import run_alembic_environment
from cascade.services.monitor.tables import metadata

run_alembic_environment(metadata)
