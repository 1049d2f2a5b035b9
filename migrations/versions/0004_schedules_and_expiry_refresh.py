"""schedules and expiry-driven refresh: schedule table, refresh settings per secret, refresh plan
and claim per secret value, schedule name per run

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 07:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "schedule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("service_slug", sa.String(length=64), nullable=False),
        sa.Column("endpoint_readable_id", sa.String(length=64), nullable=False),
        sa.Column("cron", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("run_as", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("environments", sa.Text(), nullable=True),
        sa.Column("next_run_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("last_run_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.String(length=16), nullable=True),
        sa.Column("last_run_id", sa.String(length=36), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claim_expires_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("claimed_run_id", sa.String(length=36), nullable=True),
        sa.Column("claimed_tick_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("run_started_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", app.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule")),
    )
    op.create_index(op.f("ix_schedule_name"), "schedule", ["name"], unique=True)
    op.create_index(op.f("ix_schedule_next_run_at"), "schedule", ["next_run_at"], unique=False)
    with op.batch_alter_table("secret") as batch_op:
        batch_op.add_column(sa.Column("refresh_as", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("refresh_before_expiry_seconds", sa.Integer(), nullable=True))
    with op.batch_alter_table("secret_value") as batch_op:
        batch_op.add_column(sa.Column("next_refresh_at", app.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("claim_expires_at", app.db.UTCDateTime(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_secret_value_next_refresh_at"), ["next_refresh_at"], unique=False
        )
    with op.batch_alter_table("run") as batch_op:
        batch_op.add_column(sa.Column("schedule_name", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_run_schedule_name"), ["schedule_name"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("run") as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_schedule_name"))
        batch_op.drop_column("schedule_name")
    with op.batch_alter_table("secret_value") as batch_op:
        batch_op.drop_index(batch_op.f("ix_secret_value_next_refresh_at"))
        batch_op.drop_column("claim_expires_at")
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("next_refresh_at")
    with op.batch_alter_table("secret") as batch_op:
        batch_op.drop_column("refresh_before_expiry_seconds")
        batch_op.drop_column("refresh_as")
    op.drop_index(op.f("ix_schedule_next_run_at"), table_name="schedule")
    op.drop_index(op.f("ix_schedule_name"), table_name="schedule")
    op.drop_table("schedule")
