"""refresh health and recovery: failures in a row per secret, error class and recovery per run

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 07:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("secret") as batch_op:
        # Existing rows start at zero failures; the model sets the value for new rows.
        batch_op.add_column(
            sa.Column("failure_count", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("run") as batch_op:
        batch_op.add_column(sa.Column("error_class", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("recovery", sa.Text(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("run") as batch_op:
        batch_op.drop_column("recovery")
        batch_op.drop_column("error_class")
    with op.batch_alter_table("secret") as batch_op:
        batch_op.drop_column("failure_count")
