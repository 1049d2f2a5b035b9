"""webhooks: a rotated signing secret stays valid for a grace period

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 09:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("webhook") as batch_op:
        batch_op.add_column(
            sa.Column("previous_secret_expires_at", app.db.UTCDateTime(), nullable=True)
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("webhook") as batch_op:
        batch_op.drop_column("previous_secret_expires_at")
