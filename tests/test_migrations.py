"""The Alembic migrations build the models' schema on SQLite and PostgreSQL, and undo it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from app.db import create_engine
from app.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    upgrade_database,
    upgrade_database_async,
)
from app.models import metadata
from tests.conftest import PG_SERVER, postgres_unavailable

T = TypeVar("T")


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped (WITH (FORCE)) afterwards."""
    name = f"tokenfarm_migrations_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        postgres_unavailable(f"PostgreSQL at {PG_SERVER} is unreachable: {exc!r}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{PG_SERVER}/{name}"
    finally:
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A plain URL of an empty database on each supported backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tokenfarm.db'}"
    return request.getfixturevalue("postgres_url")


async def _inspect(url: str, fn: Callable[[Connection], T]) -> T:
    """Run `fn` on a sync-facing connection of a short-lived engine."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(fn)
    finally:
        await engine.dispose()


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _schema_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, metadata)


def _constraint_names(connection: Connection) -> dict[str, set[str | None]]:
    inspector = inspect(connection)
    names: dict[str, set[str | None]] = {}
    for table in metadata.tables:
        names[table] = (
            {inspector.get_pk_constraint(table)["name"]}
            | {fk["name"] for fk in inspector.get_foreign_keys(table)}
            | {uq["name"] for uq in inspector.get_unique_constraints(table)}
            | {ix["name"] for ix in inspector.get_indexes(table)}
        )
    return names


async def _downgrade(url: str, revision: str) -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)


class TestMigrations:
    async def test_upgrade_head_on_empty_database_stamps_head_revision(
        self, database_url: str
    ) -> None:
        assert await current_revision(database_url) is None

        await upgrade_database_async(database_url)

        assert await current_revision(database_url) == head_revision()
        tables = await _inspect(database_url, _table_names)
        assert set(metadata.tables) <= tables

    async def test_downgrade_to_base_then_upgrade_again_round_trips(
        self, database_url: str
    ) -> None:
        await upgrade_database_async(database_url)

        await _downgrade(database_url, "base")

        assert await current_revision(database_url) is None
        assert await _inspect(database_url, _table_names) <= {"alembic_version"}

        await upgrade_database_async(database_url)

        assert await current_revision(database_url) == head_revision()
        assert set(metadata.tables) <= await _inspect(database_url, _table_names)

    async def test_migrated_schema_matches_models(self, database_url: str) -> None:
        await upgrade_database_async(database_url)

        diff = await _inspect(database_url, _schema_diff)

        assert diff == [], "models and migrations disagree:\n" + "\n".join(map(repr, diff))

    async def test_constraints_follow_naming_convention(self, database_url: str) -> None:
        await upgrade_database_async(database_url)

        names = await _inspect(database_url, _constraint_names)

        assert names["user_account"] == {"pk_user_account", "ix_user_account_email"}
        assert names["endpoint"] == {
            "pk_endpoint",
            "fk_endpoint_service_id_service",
            "uq_endpoint_service_id_readable_id",
        }
        assert names["secret_version"] == {
            "pk_secret_version",
            "fk_secret_version_secret_id_secret",
            "uq_secret_version_secret_id_environment_version",
        }
        assert names["run_secret"] == {"pk_run_secret", "fk_run_secret_run_id_run"}
        assert names["run"] == {
            "pk_run",
            "ix_run_service_slug",
            "ix_run_status",
            "ix_run_schedule_name",
        }
        assert names["schedule"] == {"pk_schedule", "ix_schedule_name", "ix_schedule_next_run_at"}
        assert names["webhook"] == {"pk_webhook", "ix_webhook_name"}

    def test_sync_upgrade_works_outside_an_event_loop(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'sync.db'}"

        upgrade_database(url)

        assert asyncio.run(current_revision(url)) == head_revision()

    def test_config_points_at_top_level_migrations_and_keeps_plain_url(self) -> None:
        url = "postgresql://user:p%40ss@db.example:5432/tokenfarm"

        config = alembic_config(url)

        location = Path(config.get_main_option("script_location") or "")
        assert location.is_absolute()
        assert location == Path(__file__).resolve().parent.parent / "migrations"
        assert config.get_main_option("sqlalchemy.url") == url
