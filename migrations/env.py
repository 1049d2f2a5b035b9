"""Alembic environment: async engine from `app.db`, schema from `app.models`."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection, make_url
from sqlmodel.sql.sqltypes import AutoString

from app.config import get_settings
from app.db import UTCDateTime, async_database_url, create_engine
from app.models import metadata

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata


def database_url() -> str:
    """The plain URL from the Alembic config, else the one the settings resolve to."""
    return config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render `UTCDateTime` as `app.db.UTCDateTime()` (the template imports app.db) and
    sqlmodel's AutoString as a plain `sa.String`, so migrations don't depend on sqlmodel."""
    if type_ != "type":
        return False
    if isinstance(obj, UTCDateTime):
        return "app.db.UTCDateTime()"
    if isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def configure_options(dialect_name: str) -> dict[str, Any]:
    """The `context.configure` options shared by offline and online runs."""
    return {
        "target_metadata": target_metadata,
        "compare_type": True,
        "render_as_batch": dialect_name == "sqlite",
        "render_item": render_item,
    }


def run_migrations_offline() -> None:
    """Emit the migration SQL for the configured URL without connecting."""
    url = async_database_url(database_url())
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **configure_options(make_url(url).get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    """Run the migrations on one (sync-facing) connection."""
    context.configure(connection=connection, **configure_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Connect with the application's async engine and migrate."""
    engine = create_engine(database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Run the async migration in a fresh event loop (none may be running in this thread)."""
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
