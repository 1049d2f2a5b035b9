"""identity: roles (built-in owner and anonymous), role assignments, service accounts, API keys

Users marked `is_owner` by 0001 become holders of the built-in `owner` role; the flag goes away.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 04:43:45.772764

"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import app.db

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    role = op.create_table(
        "role",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("builtin", sa.Boolean(), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_role")),
    )
    op.create_index(op.f("ix_role_name"), "role", ["name"], unique=True)
    op.create_table(
        "service_account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_account")),
    )
    op.create_index(op.f("ix_service_account_name"), "service_account", ["name"], unique=True)
    op.create_table(
        "api_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_account_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("last_used_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["service_account_id"],
            ["service_account.id"],
            name=op.f("fk_api_key_service_account_id_service_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
        sa.UniqueConstraint(
            "service_account_id", "name", name=op.f("uq_api_key_service_account_id_name")
        ),
    )
    op.create_index(op.f("ix_api_key_key_id"), "api_key", ["key_id"], unique=True)
    op.create_table(
        "service_account_role",
        sa.Column("service_account_id", sa.Integer(), nullable=False),
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["role.id"],
            name=op.f("fk_service_account_role_role_id_role"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["service_account_id"],
            ["service_account.id"],
            name=op.f("fk_service_account_role_service_account_id_service_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "service_account_id", "role_id", name=op.f("pk_service_account_role")
        ),
    )
    op.create_table(
        "user_role",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_id"], ["role.id"], name=op.f("fk_user_role_role_id_role"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_account.id"],
            name=op.f("fk_user_role_user_id_user_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "role_id", name=op.f("pk_user_role")),
    )
    now = datetime.now(UTC)
    op.bulk_insert(
        role,
        [
            {
                "id": 1,
                "name": "owner",
                "description": "Everything, including granting every permission.",
                "permissions": ["*"],
                "builtin": True,
                "created_at": now,
            },
            {
                "id": 2,
                "name": "anonymous",
                "description": "What callers without a credential may do (nothing by default).",
                "permissions": [],
                "builtin": True,
                "created_at": now,
            },
        ],
    )
    if op.get_bind().dialect.name == "postgresql":
        # The explicit ids above don't advance the sequence; the next role must not collide.
        op.execute("SELECT setval(pg_get_serial_sequence('role', 'id'), 2)")
    op.execute(
        "INSERT INTO user_role (user_id, role_id) SELECT id, 1 FROM user_account WHERE is_owner"
    )
    with op.batch_alter_table("user_account") as batch_op:
        batch_op.drop_column("is_owner")


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("user_account") as batch_op:
        batch_op.add_column(
            sa.Column("is_owner", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    user_account = sa.table("user_account", sa.column("id"), sa.column("is_owner", sa.Boolean()))
    owners = (
        sa.select(sa.column("user_id"))
        .select_from(sa.table("user_role"))
        .where(sa.column("role_id") == 1)
    )
    op.execute(user_account.update().where(user_account.c.id.in_(owners)).values(is_owner=True))
    op.drop_table("user_role")
    op.drop_table("service_account_role")
    op.drop_index(op.f("ix_api_key_key_id"), table_name="api_key")
    op.drop_table("api_key")
    op.drop_index(op.f("ix_service_account_name"), table_name="service_account")
    op.drop_table("service_account")
    op.drop_index(op.f("ix_role_name"), table_name="role")
    op.drop_table("role")
