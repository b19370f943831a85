"""Alembic environment: the monitor runs migrations itself at start-up on its own connection
(cascade.database.migrate); `alembic -c services/monitor/alembic.ini` works for humans."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from cascade.services.monitor.tables import metadata


def run_migrations(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    engine = sa.create_engine(url or "")
    with engine.begin() as opened:
        run_migrations(opened)
