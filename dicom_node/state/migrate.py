"""Schema migrations of the state database (Alembic), safe with several processes.

Who migrates: every process that opens the state DB for writing (``serve``,
its extra receiver processes, ``web serve``) brings the schema to this
version's head before it starts, unless ``database_auto_upgrade`` is off;
then ``dicom-node db upgrade`` does it (a Kubernetes Job, a maintenance
window), and a process that finds an older schema refuses to start.

Why it is safe with several processes: the whole upgrade, including reading
the current revision, runs in one transaction that holds a lock. On SQLite
that is the write lock (``BEGIN IMMEDIATE``, from the state DB's engine); on
PostgreSQL a transaction-scoped advisory lock. A second process waits, then
finds the schema at head and does nothing. PostgreSQL and SQLite both run
DDL inside a transaction, so a failed migration leaves the old schema whole.

A database made before migrations existed (tables, no ``alembic_version``) is
stamped with the baseline revision ``0001``, the schema it has, and upgraded
from there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from dicom_node.errors import NodeError
from dicom_node.state.schema import Base

__all__ = [
    "BASELINE_REVISION",
    "SchemaOutOfDate",
    "current_revision",
    "head_revision",
    "schema_differences",
    "upgrade",
]

logger = logging.getLogger(__name__)

#: The schema of nodes older than the migrations.
BASELINE_REVISION = "0001"

#: Key of PostgreSQL's advisory lock around an upgrade (any constant shared by all nodes).
_PG_LOCK_KEY = 0x6469636F6D  # "dicom"

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class SchemaOutOfDate(NodeError):
    """The state DB's schema is not the one this version of the node needs."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The revision this version of the node needs.

    Raises
    ------
    RuntimeError
        If the migrations have several heads (two branches each added one: renumber).
    """
    heads = ScriptDirectory.from_config(_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads: {', '.join(sorted(heads))}")
    return str(heads[0])


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty or pre-migration database."""
    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
    return None if revision is None else str(revision)


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the database to the head revision, under a lock.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        The state DB's write engine (on SQLite it begins with ``BEGIN IMMEDIATE``).

    Returns
    -------
    tuple[str or None, str]
        The revision before and after; equal when there was nothing to do.
    """
    head = head_revision()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        context = MigrationContext.configure(conn)
        before = context.get_current_revision()
        if before == head:
            return before, head
        config = _config(conn)
        if before is None and "studies" in inspect(conn).get_table_names():
            logger.info("state DB from before migrations: stamping it %s", BASELINE_REVISION)
            command.stamp(config, BASELINE_REVISION)
            before = BASELINE_REVISION
        command.upgrade(config, "head")
    logger.info("state DB schema upgraded from %s to %s", before or "empty", head)
    return (None if before is None else str(before)), head


def schema_differences(engine: Engine) -> list[Any]:
    """What differs between the database's schema and the models (empty when none).

    Each item is one of Alembic's autogenerate diffs, e.g.
    ``("add_table", Table(...))``: a model changed without a migration.
    """
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))
