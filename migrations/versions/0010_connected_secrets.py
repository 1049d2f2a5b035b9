"""connected secrets: provider, scopes and the hidden refresh-token companion; connect flow tables

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 11:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("secret") as batch:
        batch.add_column(sa.Column("provider", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("scopes", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("connected_by", sa.String(length=320), nullable=True))
        batch.add_column(sa.Column("companion_of", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_secret_companion_of_secret", "secret", ["companion_of"], ["id"], ondelete="CASCADE"
        )
    op.create_table(
        "connect_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("secret_id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=True),
        sa.Column("initiator", sa.String(length=255), nullable=False),
        sa.Column("browser_hash", sa.String(length=64), nullable=False),
        sa.Column("verifier", sa.Text(), nullable=True),
        sa.Column("nonce", sa.Text(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("return_to", sa.String(length=2000), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("expires_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("used_at", app.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["secret_id"], ["secret.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_connect_state_state_hash"), "connect_state", ["state_hash"], unique=True
    )
    op.create_table(
        "connect_link",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("secret_id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=True),
        sa.Column("initiator", sa.String(length=255), nullable=False),
        sa.Column("return_to", sa.String(length=2000), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("expires_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("used_at", app.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["secret_id"], ["secret.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_connect_link_token_hash"), "connect_link", ["token_hash"], unique=True)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f("ix_connect_link_token_hash"), table_name="connect_link")
    op.drop_table("connect_link")
    op.drop_index(op.f("ix_connect_state_state_hash"), table_name="connect_state")
    op.drop_table("connect_state")
    with op.batch_alter_table("secret") as batch:
        batch.drop_constraint("fk_secret_companion_of_secret", type_="foreignkey")
        batch.drop_column("companion_of")
        batch.drop_column("connected_by")
        batch.drop_column("scopes")
        batch.drop_column("provider")
