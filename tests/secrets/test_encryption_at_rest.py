"""Values are encrypted at rest: neither the raw SQLite files nor a `pg_dump` hold any of them."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.config import Settings
from tests.conftest import create_secret
from tests.secrets.conftest import Canaries, put_value, read_value

SECRET_NAME = "AT_REST_MARKER_7c1e"
FERNET_PREFIX = b"gAAAAA"  # every Fernet token starts with its version byte 0x80, base64-encoded


async def write_canaries(client: httpx.AsyncClient, canaries: Canaries) -> None:
    """Canary values in every place a value is stored: values, history, environments, JSON."""
    await create_secret(client, SECRET_NAME, canaries.new("create"))
    await put_value(client, SECRET_NAME, {"private_key": canaries.new("json"), "n": 1})
    await put_value(client, SECRET_NAME, canaries.new("production"), environment="production")
    response = await client.post(f"/v1/secrets/{SECRET_NAME}/rollback", json={"version": 1})
    assert response.status_code == 200, response.text
    await create_secret(client, "SHARED", canaries.new("shared"), environment_specific=False)
    # The values are really there, readable through the API.
    assert (await read_value(client, SECRET_NAME, "production"))["value"] == canaries.values[2]


async def raw_database(settings: Settings) -> bytes:
    """Every byte the database keeps: the SQLite files, or a `pg_dump` of the PostgreSQL one."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        files = [path, *(path.with_name(path.name + s) for s in ("-wal", "-journal"))]
        return b"".join(file.read_bytes() for file in files if file.exists())
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        pytest.fail("pg_dump (the PostgreSQL client) is needed to check encryption at rest")
    process = await asyncio.create_subprocess_exec(
        pg_dump,
        "-h",
        url.host or "127.0.0.1",
        "-p",
        str(url.port or 5432),
        "-U",
        url.username or "postgres",
        url.database or "",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PGPASSWORD": url.password or "", "PATH": ""},
    )
    dump, errors = await process.communicate()
    assert process.returncode == 0, errors.decode()
    return dump


class TestEncryptionAtRest:
    async def test_stored_database_holds_no_value(
        self, client: httpx.AsyncClient, canaries: Canaries, settings: Settings
    ) -> None:
        await write_canaries(client, canaries)
        stored = await raw_database(settings)
        # The check is not vacuous: the rows are in there, with their ciphertexts.
        assert SECRET_NAME.encode() in stored
        assert stored.count(FERNET_PREFIX) >= 6
        leaked = [value for value in canaries.values if value.encode() in stored]
        assert leaked == []
