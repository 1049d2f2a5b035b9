"""`/healthz` and `/readyz`: ready only when the database answers at the newest schema and the keys
decrypt what it stores; otherwise 503 with a reason for each case."""

from __future__ import annotations

import secrets
import shutil
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory
from cryptography.fernet import Fernet
from fastapi import FastAPI

from app import health
from app.config import Settings
from app.main import create_app
from app.migrate import MIGRATIONS_DIR, head_revision, upgrade_database_async
from tests.conftest import create_secret
from tests.processes import free_port


def deployment(database_url: str, tmp_path: Path, **more: Any) -> Settings:
    """Settings of a test deployment on a database."""
    return Settings(
        environment="test",
        data_dir=tmp_path,
        database_url=database_url,
        encryption_keys=Fernet.generate_key().decode(),
        jwt_secret=secrets.token_urlsafe(48),
        scheduler_enabled=False,
        **more,
    )


@asynccontextmanager
async def probe(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app (lifespan running) made with these settings."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tokenfarm.test") as http:
            yield http


def not_ready(response: httpx.Response, reason: str) -> str:
    """A 503 naming `reason`; answers its message."""
    assert response.status_code == 503, response.text
    body = response.json()
    assert (body["status"], body["reason"]) == ("not_ready", reason), body
    assert (body["error"]["type"], body["error"]["reason"]) == ("not_ready", reason), body
    message: str = body["error"]["message"]
    return message


def previous_revision() -> str:
    """The revision just before head."""
    script = ScriptDirectory(str(MIGRATIONS_DIR)).get_revision(head_revision())
    assert script is not None and isinstance(script.down_revision, str)
    return script.down_revision


@contextmanager
def silent_server() -> Iterator[int]:
    """A port where connections are taken (by the kernel's backlog) but never answered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


@pytest.fixture
def sqlite_copy(sqlite_template: Path, tmp_path: Path) -> str:
    """A SQLite database at head, of this test alone."""
    path = tmp_path / "copy.db"
    shutil.copy(sqlite_template, path)
    return str(path)


class TestLiveness:
    async def test_healthz_answers_ok(self, anonymous_client: httpx.AsyncClient) -> None:
        response = await anonymous_client.get("/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})


class TestReady:
    async def test_ready_at_head_with_values_the_keys_decrypt(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "FIRST", "one")
        await create_secret(client, "SECOND", "two")

        response = await anonymous_client.get("/readyz")

        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ready", "revision": head_revision()}

    async def test_ready_on_an_empty_database(self, anonymous_client: httpx.AsyncClient) -> None:
        assert (await anonymous_client.get("/readyz")).status_code == 200


class TestNotReady:
    async def test_an_unreachable_database(self, tmp_path: Path) -> None:
        nothing_listens = f"postgresql://postgres@127.0.0.1:{free_port()}/tokenfarm"
        async with probe(deployment(nothing_listens, tmp_path)) as http:
            message = not_ready(await http.get("/readyz"), "database_unreachable")
        assert "the database is unreachable" in message

    async def test_a_database_that_never_answers(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(health, "READINESS_TIMEOUT_SECONDS", 0.5)
        with silent_server() as port:
            url = f"postgresql://postgres@127.0.0.1:{port}/tokenfarm"
            async with probe(deployment(url, tmp_path)) as http:
                message = not_ready(await http.get("/readyz"), "database_unreachable")
        assert message == "the database did not answer within 0.5 s"

    async def test_a_schema_behind_the_migrations(self, tmp_path: Path) -> None:
        older = previous_revision()
        url = f"sqlite:///{tmp_path / 'old.db'}"
        await upgrade_database_async(url, older)

        async with probe(deployment(url, tmp_path)) as http:
            message = not_ready(await http.get("/readyz"), "schema_behind")

        assert message == (
            f"the database schema is at {older}, not {head_revision()}: run `tokenfarm migrate`"
        )

    async def test_a_database_never_migrated(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'empty.db'}"
        async with probe(deployment(url, tmp_path)) as http:
            message = not_ready(await http.get("/readyz"), "schema_behind")
        assert message.startswith("the database schema is at nothing")

    async def test_a_schema_of_a_newer_version(self, sqlite_copy: str, tmp_path: Path) -> None:
        with sqlite3.connect(sqlite_copy) as connection:
            connection.execute("UPDATE alembic_version SET version_num = 'f00dfacade99'")

        async with probe(deployment(f"sqlite:///{sqlite_copy}", tmp_path)) as http:
            message = not_ready(await http.get("/readyz"), "schema_unknown")

        assert "f00dfacade99" in message and "newer version" in message

    async def test_keys_that_cant_decrypt_the_stored_values(
        self, client: httpx.AsyncClient, settings: Settings, tmp_path: Path
    ) -> None:
        await create_secret(client, "WRITTEN", "with the first key")
        other_keys = settings.model_copy(update={"encryption_keys": Fernet.generate_key().decode()})

        async with probe(other_keys) as http:
            message = not_ready(await http.get("/readyz"), "keys_mismatch")

        assert "TOKENFARM_ENCRYPTION_KEYS" in message
        # With the old key listed after a new one, the values decrypt again.
        rotated = settings.model_copy(
            update={"encryption_keys": f"{other_keys.encryption_keys},{settings.encryption_keys}"}
        )
        async with probe(rotated) as http:
            assert (await http.get("/readyz")).status_code == 200

    async def test_keys_not_loaded(self, app: FastAPI, anonymous_client: httpx.AsyncClient) -> None:
        app.state.keyring = None
        message = not_ready(await anonymous_client.get("/readyz"), "keys_not_loaded")
        assert message == "the encryption keys are not loaded"
