"""The example set-up of `tokenfarm demo`: the canonical refresh against a local token server."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.accounts import AccountStore
from app.auth.actor import Actor
from app.auth.schemas import ApiKeyCreate, RoleCreate, ServiceAccountCreate
from app.config import Settings
from app.crypto import Keyring
from app.errors import NotFound
from app.pipeline.schemas import CANONICAL_ACTION_EXAMPLE
from app.secrets.schemas import SecretCreate, SecretUpdate
from app.secrets.store import SecretStore
from app.services.schemas import ServiceBody, ServiceCreate
from app.services.store import ServiceStore

SYSTEM = Actor(kind="system", name="demo", permissions=frozenset({"*"}))
DEMO_ROLE = RoleCreate(
    name="demo",
    description="Runs the demo refresh and reads its token",
    permissions=[
        "services.run:oauth",
        "secrets.update_from_service:ACCESS_TOKEN",
        "secrets.update_from_service:REFRESH_TOKEN",
        "secrets.read:ACCESS_TOKEN",
        "secrets.manage",
        "runs.read",
    ],
)
DEMO_SLUG = "oauth"
DEMO_ENDPOINT = "refresh-token"


def demo_action(token_url: str) -> list[dict[str, Any]]:
    """The canonical action, pointed at `token_url`."""
    action = copy.deepcopy(CANONICAL_ACTION_EXAMPLE)
    action[1]["url"] = token_url
    return action


def demo_settings(settings: Settings) -> Settings:
    """The settings with the bundled token server (on 127.0.0.1) opened in the egress guard."""
    entries = [entry for entry in settings.egress_allow.split(",") if entry.strip()]
    allow = ",".join([*entries, "127.0.0.1"])
    return settings.model_copy(update={"egress_allow": allow})


async def seed_demo(
    session: AsyncSession,
    keyring: Keyring,
    settings: Settings,
    *,
    token_url: str,
    client_id: str,
    client_secret: str,
    refresh_token: str,
) -> str:
    """Create (or reset) the demo secrets, the `oauth` service and a `demo` key; returns the key."""
    secrets = SecretStore(session, keyring, settings)
    values = {
        "CLIENT_ID": client_id,
        "CLIENT_SECRET": client_secret,
        "REFRESH_TOKEN": refresh_token,
    }
    for name, description in (
        ("CLIENT_ID", "OAuth client id"),
        ("CLIENT_SECRET", "OAuth client secret"),
        ("REFRESH_TOKEN", "Rotating refresh token"),
        ("ACCESS_TOKEN", "Short-lived access token"),
    ):
        try:
            secret = await secrets.get(name)
        except NotFound:
            secret = await secrets.create(
                SecretCreate(name=name, description=description), actor="system:demo"
            )
        if name in values:
            await secrets.set_value(secret, values[name], actor="system:demo", source="manual")
    services = ServiceStore(session)
    body = {
        "name": "Local OAuth token server",
        "endpoints": [
            {
                "readable_id": DEMO_ENDPOINT,
                "name": "Refresh the access token",
                "methods": ["GET", "POST"],
                "enable_log": True,
                "action": demo_action(token_url),
            }
        ],
    }
    try:
        service = await services.get(DEMO_SLUG)
        await services.replace(service, ServiceBody.model_validate(body))
    except NotFound:
        await services.create(ServiceCreate.model_validate({"slug": DEMO_SLUG, **body}))
    access = await secrets.get("ACCESS_TOKEN")
    await secrets.update(access, SecretUpdate(refresh_endpoint=f"{DEMO_SLUG}/{DEMO_ENDPOINT}"))
    return await _demo_key(AccountStore(session))


async def _demo_key(accounts: AccountStore) -> str:
    """A fresh key of the `demo` service account, whose role may refresh and read the token."""
    try:
        await accounts.role(DEMO_ROLE.name)
    except NotFound:
        await accounts.create_role(DEMO_ROLE, SYSTEM)
    try:
        account = await accounts.service_account("demo")
    except NotFound:
        account = await accounts.create_service_account(
            ServiceAccountCreate(name="demo", description="tokenfarm demo", roles=[DEMO_ROLE.name]),
            SYSTEM,
        )
    try:
        await accounts.delete_api_key(account, "demo")
    except NotFound:
        pass
    created = await accounts.create_api_key(account, ApiKeyCreate(name="demo"), SYSTEM)
    return created.key
