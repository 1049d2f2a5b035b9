"""Fixtures of the config-as-code tests: a full document against the loopback token server,
applied in-process the way `tokenfarm apply` does (as the system), and canary values."""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from app.auth.actor import Actor
from app.configuration.apply import apply_document
from app.configuration.loader import load
from app.configuration.plan import Change, Plan
from app.configuration.values import ValueSource
from tests.auth import conftest as auth_fixtures
from tests.conftest import CLIENT_ID, TokenServer, canonical_action

# Every section declared and empty: with prune, it deletes everything but the built-in roles.
EMPTY = "version: 1\nroles: []\nservice_accounts: []\nsecrets: []\nservices: []\nschedules: []\n"
SYSTEM = Actor(kind="system", name="test", permissions=frozenset({"*"}))

callers = auth_fixtures.callers  # the fixture of tests/auth, shared


@dataclass
class Canaries:
    """Unique values that must never show up in a plan, an export, an error or a log."""

    values: list[str] = field(default_factory=list)

    def new(self, label: str) -> str:
        """A fresh canary value."""
        value = f"canary-{label}-{uuid.uuid4().hex}"
        self.values.append(value)
        return value

    def assert_absent(self, text: str, where: str) -> None:
        """Fail when `text` holds any canary."""
        leaked = [value for value in self.values if value in text]
        assert not leaked, f"{where} leaks {leaked}"


@dataclass
class Setup:
    """A document and what applying it needs: its directory (for `file:`), env and canaries."""

    document: dict[str, Any]
    directory: Path
    env: dict[str, str]
    canaries: Canaries
    client_secret: str
    refresh_token: str

    def text(self, document: dict[str, Any] | None = None) -> str:
        """The document (or another) as YAML."""
        return yaml.safe_dump(document or self.document, sort_keys=False)

    def copy(self) -> dict[str, Any]:
        """A deep copy of the document, to change."""
        return copy.deepcopy(self.document)


def full_document(token_server: TokenServer) -> dict[str, Any]:
    """Every kind of object: roles, accounts, secrets (values from env and file, a preset
    refresher), the canonical refresh service and schedules (by endpoint and by secret)."""
    return {
        "version": 1,
        "roles": [
            {
                "name": "refresher",
                "description": "Refreshes the tokens",
                "permissions": [
                    "services.run:oauth",
                    "services.run:refreshers",
                    "secrets.update_from_service:ACCESS_TOKEN",
                    "secrets.update_from_service:REFRESH_TOKEN",
                    "secrets.update_from_service:CC_TOKEN",
                ],
            },
            {"name": "reader", "permissions": ["secrets.read:ACCESS_TOKEN"]},
        ],
        "service_accounts": [
            {"name": "refresher", "description": "Runs refreshes", "roles": ["refresher"]},
            {"name": "app", "roles": ["reader"]},
        ],
        "secrets": [
            {
                "name": "CLIENT_ID",
                "description": "OAuth client id",
                "environment_specific": False,
                "value_from": {"env": "TF_CLIENT_ID"},
            },
            {
                "name": "CLIENT_SECRET",
                "environment_specific": False,
                "value_from": {"file": "client_secret.txt"},
            },
            {
                "name": "REFRESH_TOKEN",
                "value_from": {"env": "TF_REFRESH_TOKEN", "initial_only": True},
            },
            {
                "name": "ACCESS_TOKEN",
                "description": "The access token",
                "refresh_endpoint": "oauth/refresh-token",
                "refresh_as": "refresher",
                "refresh_before_expiry_seconds": 120,
            },
            {
                "name": "CC_TOKEN",
                "refresher": {
                    "preset": "oauth2_client_credentials",
                    "params": {
                        "token_url": token_server.token_url,
                        "client_id_secret": "CLIENT_ID",
                        "client_secret_secret": "CLIENT_SECRET",
                    },
                },
            },
        ],
        "services": [
            {
                "slug": "oauth",
                "name": "OAuth",
                "variables": [{"name": "token", "type": "string"}],
                "endpoints": [
                    {
                        "readable_id": "refresh-token",
                        "name": "Refresh",
                        "enable_log": True,
                        "action": canonical_action(token_server.token_url),
                    },
                    {
                        "readable_id": "ping",
                        "name": "Ping",
                        "methods": ["GET"],
                        "action": [{"type": "log", "message": "pong"}],
                    },
                ],
            }
        ],
        "schedules": [
            {
                "name": "hourly",
                "secret": "ACCESS_TOKEN",
                "cron": "0 * * * *",
                "timezone": "Europe/Berlin",
                "run_as": "refresher",
            },
            {
                "name": "ping-nightly",
                "service": "oauth",
                "endpoint": "ping",
                "cron": "0  3 * * *",
                "run_as": "refresher",
                "enabled": False,
                "environments": ["production", "test"],
            },
        ],
    }


@pytest.fixture
def setup(token_server: TokenServer, tmp_path: Path) -> Setup:
    """The full document in a directory with its `client_secret.txt`, and its env."""
    canaries = Canaries()
    client_secret = canaries.new("client-secret")
    refresh_token = token_server.state.issue_refresh_token(CLIENT_ID)
    canaries.values.append(refresh_token)
    token_server.state.add_client(CLIENT_ID, client_secret)
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "client_secret.txt").write_text(client_secret + "\n")
    return Setup(
        document=full_document(token_server),
        directory=directory,
        env={"TF_CLIENT_ID": CLIENT_ID, "TF_REFRESH_TOKEN": refresh_token},
        canaries=canaries,
        client_secret=client_secret,
        refresh_token=refresh_token,
    )


async def apply_text(
    app: FastAPI,
    text: str,
    *,
    env: dict[str, str] | None = None,
    directory: Path | None = None,
    prune: bool = False,
    dry_run: bool = False,
    file: str = "tokenfarm.yaml",
    actor: Actor = SYSTEM,
) -> Plan:
    """Apply a document to the app's database as `tokenfarm apply` does (one transaction)."""
    loaded = load(text, file)
    values = ValueSource(env=env or {}, base_dir=directory)
    async with app.state.session_factory() as session:
        try:
            plan = await apply_document(
                session,
                app.state.keyring,
                app.state.settings,
                loaded,
                actor=actor,
                values=values,
                prune=prune,
            )
            if dry_run:
                await session.rollback()
            else:
                await session.commit()
        except BaseException:
            await session.rollback()
            raise
    return plan


async def apply_setup(app: FastAPI, setup: Setup, **options: Any) -> Plan:
    """Apply the setup's document (or `text=` another) with its env and directory."""
    text = options.pop("text", None) or setup.text()
    return await apply_text(app, text, env=setup.env, directory=setup.directory, **options)


def changed(plan: Plan) -> list[Change]:
    """The changes of a plan that change something."""
    return [change for change in plan.changes if change.action != "unchanged"]


def described(plan: Plan) -> set[tuple[str, str, str]]:
    """(kind, name, action) of every change that changes something."""
    return {(c.kind, c.name, c.action) for c in changed(plan)}


async def snapshot(client: httpx.AsyncClient) -> dict[str, Any]:
    """Everything the API shows of the configuration (to prove that nothing changed)."""
    state = {}
    for path in ("/v1/roles", "/v1/service-accounts", "/v1/secrets", "/v1/services"):
        response = await client.get(path)
        assert response.status_code == 200, response.text
        state[path] = response.json()
    response = await client.get("/v1/schedules")
    assert response.status_code == 200, response.text
    state["/v1/schedules"] = [
        {k: v for k, v in s.items() if k not in ("next_run_at",)} for s in response.json()
    ]
    return state
