"""providers: the OAuth authorization servers connected secrets come from

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 11:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "provider",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("catalog", sa.String(length=64), nullable=True),
        sa.Column("issuer", sa.String(length=2000), nullable=True),
        sa.Column("authorization_url", sa.String(length=2000), nullable=True),
        sa.Column("token_url", sa.String(length=2000), nullable=True),
        sa.Column("revocation_url", sa.String(length=2000), nullable=True),
        sa.Column("device_authorization_url", sa.String(length=2000), nullable=True),
        sa.Column("jwks_uri", sa.String(length=2000), nullable=True),
        sa.Column("client_auth", sa.String(length=32), nullable=False),
        sa.Column("client_id_secret", sa.String(length=128), nullable=True),
        sa.Column("client_secret_secret", sa.String(length=128), nullable=True),
        sa.Column("private_key_secret", sa.String(length=128), nullable=True),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("authorize_params", sa.JSON(), nullable=False),
        sa.Column("pkce", sa.Boolean(), nullable=False),
        sa.Column("refresh_token_reuse_grace_seconds", sa.Integer(), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", app.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_provider_name"), "provider", ["name"], unique=True)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f("ix_provider_name"), table_name="provider")
    op.drop_table("provider")
