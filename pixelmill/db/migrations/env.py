"""Alembic environment of the job store.

Normally run by :func:`pixelmill.db.engine.upgrade_schema`, which hands over a connection
already inside a (locked) transaction through ``config.attributes["connection"]``. When
run from the ``alembic`` command line instead, the database URL comes from ``-x url=…``
(or ``sqlalchemy.url`` in the ini file).
"""

from __future__ import annotations

from alembic import context

from pixelmill.db.engine import create_db_engine
from pixelmill.db.tables import Base

target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables when needed.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _command_line_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database with: alembic -x url=sqlite:///path/to/jobs.db …")
    return url


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_db_engine(_command_line_url())
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported for the job store")
main()
