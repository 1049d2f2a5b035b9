"""`tokenfarm rotate-keys`: everything written with key A is readable with key B alone after a
rotation with TOKENFARM_ENCRYPTION_KEYS="B,A"; re-running is harmless; unknown ciphertexts stop it.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy import inspect, text

from app.config import Settings
from app.crypto import Keyring
from app.db import utcnow
from app.errors import ConfigurationError
from app.runs.models import Run
from tests.cli.runner import invoke
from tests.conftest import create_secret

CANARY = "rotation-canary-0c7d2e"
ENCRYPTED = {
    "secret_value": "ciphertext",
    "secret_version": "ciphertext",
    "run": "recovery",
    "webhook": "signing_secret_ciphertext",
}


async def ciphertexts(app: FastAPI) -> dict[str, str]:
    """Every stored ciphertext, by `table #id`."""
    found: dict[str, str] = {}
    async with app.state.engine.connect() as connection:
        tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        for table, column in ENCRYPTED.items():
            if table not in tables:
                continue
            rows = await connection.execute(
                text(f'SELECT id, {column} FROM "{table}" WHERE {column} IS NOT NULL')
            )
            found.update({f"{table} #{key}": value for key, value in rows})
    return found


def decrypt_all(keyring: Keyring, stored: dict[str, str]) -> dict[str, Any]:
    """Every ciphertext decrypted with one keyring."""
    return {where: keyring.decrypt(ciphertext) for where, ciphertext in stored.items()}


async def add_recoverable_run(app: FastAPI, keyring: Keyring, value: Any) -> str:
    """A failed run that kept its upstream's answer (a new value of PLAIN over version 2)."""
    run_id = str(uuid.uuid4())
    write = {"secret": "PLAIN", "environment": "test", "value": value, "expires_at": None}
    async with app.state.session_factory() as session, session.begin():
        session.add(
            Run(
                id=run_id,
                service_slug="oauth",
                endpoint_readable_id="refresh-token",
                trigger="refresh",
                actor="system:test",
                status="failed",
                http_status=409,
                error_type="version_conflict",
                finished_at=utcnow(),
                recovery=keyring.encrypt({"writes": [{**write, "base_version": 2}]}),
            )
        )
    return run_id


async def add_webhook(app: FastAPI, keyring: Keyring) -> bool:
    """A webhook with an encrypted signing secret, when this schema has webhooks."""
    async with app.state.engine.connect() as connection:
        tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
    if "webhook" not in tables:
        return False
    from app.notifications.models import Webhook

    async with app.state.session_factory() as session, session.begin():
        session.add(
            Webhook(
                name="ops",
                url="https://hooks.example.com/tokenfarm",
                signing_secret_ciphertext=keyring.encrypt(f"whsec-{CANARY}"),
                events="secret.failing",
                created_by="test",
            )
        )
    return True


class TestRotateKeys:
    async def test_after_rotating_only_the_new_key_reads_everything(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        settings: Settings,
        cli_env: dict[str, str],
    ) -> None:
        assert settings.encryption_keys is not None
        old_key, new_key = settings.encryption_keys, Fernet.generate_key().decode()
        old, new = Keyring([old_key]), Keyring([new_key])
        await create_secret(client, "PLAIN", f"{CANARY}-1")
        put = await client.put("/v1/secrets/PLAIN/value", json={"value": {"nested": CANARY}})
        assert put.status_code == 200, put.text
        recoverable = await add_recoverable_run(app, old, f"{CANARY}-recovered")
        has_webhook = await add_webhook(app, old)
        before = await ciphertexts(app)
        values = decrypt_all(old, before)
        assert any(where.startswith("run #") for where in values)
        assert any(where.startswith("webhook #") for where in values) == has_webhook

        rotated = invoke(
            "rotate-keys",
            "--batch-size",
            "2",
            env={**cli_env, "TOKENFARM_ENCRYPTION_KEYS": f"{new_key},{old_key}"},
        )

        assert rotated.returncode == 0, rotated.stderr
        assert f"re-encrypted {len(before)} rows with the first key" in rotated.stdout
        assert "1 recovery records" in rotated.stdout
        assert "the other 1 key(s) can now be removed" in rotated.stdout
        after = await ciphertexts(app)
        assert set(after) == set(before)
        assert decrypt_all(new, after) == values
        for ciphertext in after.values():
            with pytest.raises(ConfigurationError):
                old.decrypt(ciphertext)
        assert CANARY not in rotated.stdout + rotated.stderr

        # With the new key alone, the recovery record still writes what the upstream answered.
        only_new = {**cli_env, "TOKENFARM_ENCRYPTION_KEYS": new_key}
        recovered = invoke("runs", "recover", recoverable, env=only_new)
        assert recovered.returncode == 0, recovered.stderr
        assert f"run {recoverable} recovered" in recovered.stdout
        assert "PLAIN: version 3" in recovered.stdout
        current = [v for k, v in (await ciphertexts(app)).items() if k.startswith("secret_value")]
        assert new.decrypt(current[0]) == f"{CANARY}-recovered"
        assert invoke("secrets", "list", env=only_new).returncode == 0

    async def test_running_again_changes_nothing_and_unknown_keys_stop_it(
        self, client: httpx.AsyncClient, app: FastAPI, settings: Settings, cli_env: dict[str, str]
    ) -> None:
        assert settings.encryption_keys is not None
        old_key, new_key = settings.encryption_keys, Fernet.generate_key().decode()
        await create_secret(client, "PLAIN", CANARY, environment_specific=False)
        both = {**cli_env, "TOKENFARM_ENCRYPTION_KEYS": f"{new_key},{old_key}"}
        assert invoke("rotate-keys", env=both).returncode == 0
        once = await ciphertexts(app)

        again = invoke("rotate-keys", env=both)

        assert again.returncode == 0, again.stderr
        assert "re-encrypted 0 rows" in again.stdout and "2 were on it already" in again.stdout
        assert await ciphertexts(app) == once

        stranger = Fernet.generate_key().decode()
        refused = invoke(
            "rotate-keys", env={**cli_env, "TOKENFARM_ENCRYPTION_KEYS": f"{stranger},{old_key}"}
        )
        assert refused.returncode == 1
        assert "error: 2 stored ciphertexts can't be decrypted with any configured key" in (
            refused.stderr
        )
        assert "remove no key" in refused.stderr
        assert await ciphertexts(app) == once
