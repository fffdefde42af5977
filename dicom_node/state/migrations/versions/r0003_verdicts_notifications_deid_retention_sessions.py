"""Routing verdicts, notifications, the de-identification map, retention, sessions, rejections.

New tables: ``routing_verdicts`` (why each series got each pipeline or not),
``notifications`` (the webhook/e-mail outbox), ``deid_uids`` (the encrypted UID
map of research destinations), ``web_sessions`` (server-side dashboard
sessions) and ``rejections`` (results withdrawn by IOCM rejection notes). New
columns: ``purged_at`` on studies and instances, ``purged_bytes`` on studies and
``results_purged_at`` on jobs (retention keeps the history without the files).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    op.create_table(
        "deid_uids",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("original_digest", sa.String(length=64), nullable=False),
        sa.Column("original", sa.Text(), nullable=False),
        sa.Column("study_tag", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("destination", "original_digest"),
    )
    with op.batch_alter_table("deid_uids", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deid_uids_pseudonym"), ["pseudonym"], unique=False)

    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.Column("credential", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_sessions_user_name"), ["user_name"], unique=False)

    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=80), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notifications_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_notifications_state"), ["state"], unique=False)

    op.create_table(
        "routing_verdicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("pipeline", sa.String(length=64), nullable=False),
        sa.Column("pipeline_version", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("new_job", sa.Boolean(), nullable=False),
        sa.Column("routed_at", sa.DateTime(), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("routing_verdicts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_routing_verdicts_routed_at"), ["routed_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_routing_verdicts_study_uid"), ["study_uid"], unique=False
        )

    op.create_table(
        "rejections",
        sa.Column("export_id", sa.Integer(), nullable=False),
        sa.Column("note_export_id", sa.Integer(), nullable=False),
        sa.Column("superseded_by", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["export_id"],
            ["exports.id"],
        ),
        sa.ForeignKeyConstraint(
            ["note_export_id"],
            ["exports.id"],
        ),
        sa.ForeignKeyConstraint(
            ["superseded_by"],
            ["jobs.id"],
        ),
        sa.PrimaryKeyConstraint("export_id"),
    )
    with op.batch_alter_table("rejections", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_rejections_note_export_id"), ["note_export_id"], unique=False
        )

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(), nullable=True))

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("results_purged_at", sa.DateTime(), nullable=True))

    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("purged_bytes", sa.BigInteger(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    """Downgrade the schema."""
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("purged_bytes")
        batch_op.drop_column("purged_at")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("results_purged_at")

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("purged_at")

    with op.batch_alter_table("rejections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rejections_note_export_id"))

    op.drop_table("rejections")
    with op.batch_alter_table("routing_verdicts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_routing_verdicts_study_uid"))
        batch_op.drop_index(batch_op.f("ix_routing_verdicts_routed_at"))

    op.drop_table("routing_verdicts")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_state"))
        batch_op.drop_index(batch_op.f("ix_notifications_job_id"))

    op.drop_table("notifications")
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_sessions_user_name"))

    op.drop_table("web_sessions")
    with op.batch_alter_table("deid_uids", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deid_uids_pseudonym"))

    op.drop_table("deid_uids")
