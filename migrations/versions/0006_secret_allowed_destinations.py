"""secret.allowed_destinations: the origins a run may send a secret's value to

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 09:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("secret") as batch_op:
        batch_op.add_column(sa.Column("allowed_destinations", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("secret") as batch_op:
        batch_op.drop_column("allowed_destinations")
