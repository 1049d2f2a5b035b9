"""user token generation: a password change or "log out everywhere" ends every earlier login token

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 09:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("user_account") as batch_op:
        # Existing users start at generation 0; tokens issued before this revision carry no
        # generation at all and are refused, so everyone logs in once more after the upgrade.
        batch_op.add_column(
            sa.Column("token_generation", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("user_account") as batch_op:
        batch_op.drop_column("token_generation")
