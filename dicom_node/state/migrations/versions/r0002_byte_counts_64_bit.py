"""Byte counts as 64-bit integers: an association (or an instance) may pass 2 GiB.

PostgreSQL's ``integer`` stops at 2**31 - 1 bytes, which one association of a
large CT or MR study exceeds; SQLite's INTEGER was 64-bit all along, and its
tables are rewritten in batch mode only so that the declared type matches.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Widen ``associations.bytes`` and ``instances.size``."""
    with op.batch_alter_table("associations") as batch:
        batch.alter_column("bytes", type_=sa.BigInteger(), existing_nullable=False)
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("size", type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    """Narrow them back to 32 bits (fails if a value no longer fits)."""
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("size", type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table("associations") as batch:
        batch.alter_column("bytes", type_=sa.Integer(), existing_nullable=False)
