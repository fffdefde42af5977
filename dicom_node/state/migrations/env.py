"""Alembic's environment for the state database.

Two callers: :func:`dicom_node.state.migrate.upgrade`, which passes an open
connection (already inside the transaction that holds the migration lock) in
``config.attributes["connection"]``, and a developer's ``alembic`` command
(``alembic.ini`` at the repository root), which names the database with
``-x url=...`` or ``DICOM_NODE_DATABASE_URL``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from dicom_node.state.schema import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        # SQLite alters a table by copying it; batch mode writes those copies.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "DICOM_NODE_DATABASE_URL", ""
    )
    if not url:
        raise SystemExit("name the database: alembic -x url=sqlite:///path/state.db ...")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


_main()
