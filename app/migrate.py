"""Schema migrations: run the Alembic scripts in the top-level `migrations/` folder from code."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for the migrations folder and a plain database URL (no ini file)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Upgrade the database to `revision`; call only from a thread with no running event loop."""
    command.upgrade(alembic_config(url), revision)


async def upgrade_database_async(url: str, revision: str = "head") -> None:
    """Upgrade the database from async code by running `upgrade_database` in a worker thread."""
    await asyncio.to_thread(upgrade_database, url, revision)


def head_revision() -> str:
    """The single head revision of the migration scripts."""
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    if head is None:
        raise RuntimeError(f"no migration scripts in {MIGRATIONS_DIR}")
    return head


async def engine_revision(engine: AsyncEngine) -> str | None:
    """The revision stamped in an engine's database, or None if there is none."""
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync_connection: MigrationContext.configure(
                sync_connection
            ).get_current_revision()
        )


async def current_revision(url: str) -> str | None:
    """The revision stamped in the database's alembic_version table, or None if there is none."""
    engine = create_engine(url)
    try:
        return await engine_revision(engine)
    finally:
        await engine.dispose()
