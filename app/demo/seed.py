"""The set-up of `tokenfarm demo`: examples/demo.yaml applied against the bundled token server.

The demo is config as code like any other deployment: the document declares the roles, the
accounts, the secrets (values from DEMO_* variables the demo fills from its token server's
client), the canonical refresh and a schedule that rotates the tokens every minute. Then Connect:
a provider `demo` at the bundled token server, a connected secret `DEMO_CONNECTED`, and a connect
link made on the owner's behalf, which the demo prints: open it, click Allow, and the secret is
connected and refreshing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

import app
from app.auth.accounts import AccountStore
from app.auth.actor import Actor
from app.auth.schemas import ApiKeyCreate
from app.config import Settings
from app.configuration.apply import apply_document
from app.configuration.loader import load
from app.configuration.plan import Plan
from app.configuration.values import ValueSource
from app.connect.flow import create_link
from app.connect.secrets import create_connected
from app.connect.tokens import clear_connection, connected_secret, refresh_token_of
from app.crypto import Keyring
from app.demo.token_server import (
    AUTHORIZE_PATH,
    DEVICE_AUTHORIZATION_PATH,
    REVOKE_PATH,
    TOKEN_PATH,
)
from app.errors import ConfigurationError, NotFound
from app.providers.models import Provider
from app.secrets.schemas import SecretCreate
from app.secrets.store import SecretStore

SYSTEM = Actor(kind="system", name="demo", permissions=frozenset({"*"}))
DEMO_DOCUMENT = Path(app.__file__).resolve().parent.parent / "examples" / "demo.yaml"
# Where examples/demo.yaml expects the token server; the demo rewrites it for another port.
DOCUMENT_TOKEN_SERVER = "http://127.0.0.1:8765"  # noqa: S105 - an address, not a secret
DEMO_ACCOUNT = "demo"
DEMO_KEY_NAME = "demo"
ROTATING_SECRET = "REFRESH_TOKEN"  # noqa: S105 - a secret's name, not a secret


CONNECTED_SECRET = "DEMO_CONNECTED"  # noqa: S105 - a secret's name, not a secret
DEMO_PROVIDER = "demo"
DEMO_OWNER = "user:owner@example.com"


@dataclass
class DemoSetup:
    """What the demo applied, the new API key of its `demo` account (shown once), and a
    single-use link that connects `DEMO_CONNECTED`."""

    plan: Plan
    key: str
    connect_link: str | None  # None without TOKENFARM_PUBLIC_URL (tokenfarm demo sets it)


def demo_settings(settings: Settings, public_url: str | None = None) -> Settings:
    """The settings with the bundled token server (on 127.0.0.1) opened in the egress guard,
    and `public_url` (the demo's own address) as TOKENFARM_PUBLIC_URL unless one is set."""
    entries = [entry for entry in settings.egress_allow.split(",") if entry.strip()]
    allow = ",".join([*entries, "127.0.0.1"])
    update: dict[str, str] = {"egress_allow": allow}
    if settings.public_url is None and public_url is not None:
        update["public_url"] = public_url.rstrip("/")
    return settings.model_copy(update=update)


def demo_document(token_server_url: str, path: Path = DEMO_DOCUMENT) -> str:
    """The example document, pointed at the token server actually running."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise ConfigurationError(
            f"the demo's configuration {path} is missing; run the demo from a clone of the "
            "repository (make run)"
        ) from None
    return text.replace(DOCUMENT_TOKEN_SERVER, token_server_url.rstrip("/"))


async def seed_demo(
    session: AsyncSession,
    keyring: Keyring,
    settings: Settings,
    *,
    token_server_url: str,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    path: Path = DEMO_DOCUMENT,
) -> DemoSetup:
    """Apply the demo's document (again: it is idempotent) and make a new key for `demo`.

    The bundled token server starts afresh each time, so its new refresh token is written by
    hand when the document (which only seeds it) leaves the stored, now unknown, one in place —
    just as after a new consent.
    """
    loaded = load(demo_document(token_server_url, path), str(path))
    env = {
        "DEMO_CLIENT_ID": client_id,
        "DEMO_CLIENT_SECRET": client_secret,
        "DEMO_REFRESH_TOKEN": refresh_token,
    }
    plan = await apply_document(
        session,
        keyring,
        settings,
        loaded,
        actor=SYSTEM,
        values=ValueSource(env=env, base_dir=path.parent),
        prune=False,
    )
    seeded = any(c.name == ROTATING_SECRET and c.writes_value for c in plan.changes)
    if not seeded:
        secrets = SecretStore(session, keyring, settings)
        await secrets.set_value(
            await secrets.get(ROTATING_SECRET),
            refresh_token,
            actor=SYSTEM.label,
            source="manual",
        )
    link = await _seed_connected(session, keyring, settings, token_server_url)
    return DemoSetup(plan=plan, key=await _demo_key(AccountStore(session)), connect_link=link)


async def _seed_connected(
    session: AsyncSession, keyring: Keyring, settings: Settings, token_server_url: str
) -> str | None:
    """The provider `demo` (its URLs follow the token server's port), the connected secret
    `DEMO_CONNECTED` and a connect link for it (when there is a public URL to link to).

    The bundled token server starts afresh each time, so tokens from an earlier start are
    unknown to it: they are cleared (a `disconnect` version), and the new link connects again.
    """
    base = token_server_url.rstrip("/")
    endpoints = {
        "authorization_url": f"{base}{AUTHORIZE_PATH}",
        "token_url": f"{base}{TOKEN_PATH}",
        "revocation_url": f"{base}{REVOKE_PATH}",
        "device_authorization_url": f"{base}{DEVICE_AUTHORIZATION_PATH}",
    }
    query = select(Provider).where(col(Provider.name) == DEMO_PROVIDER)
    provider = (await session.execute(query)).scalar_one_or_none()
    if provider is None:
        provider = Provider(
            name=DEMO_PROVIDER,
            description="The bundled token server of tokenfarm demo",
            client_auth="basic",
            client_id_secret="CLIENT_ID",  # noqa: S106 - names of secrets
            client_secret_secret="CLIENT_SECRET",  # noqa: S106
            scopes=["read"],
            pkce=True,
        )
        session.add(provider)
    for field_name, url in endpoints.items():
        setattr(provider, field_name, url)
    await session.flush()
    try:
        await connected_secret(session, CONNECTED_SECRET)
    except NotFound:
        data = SecretCreate(
            name=CONNECTED_SECRET,
            description="Connected to the demo provider: open the printed link and click Allow",
            provider=DEMO_PROVIDER,
        )
        await create_connected(session, keyring, settings, data, SYSTEM)
    else:
        if await refresh_token_of(session, keyring, settings, CONNECTED_SECRET) is not None:
            await clear_connection(session, keyring, settings, CONNECTED_SECRET, actor=SYSTEM.label)
    if settings.public_url is None:
        return None
    url, _ = await create_link(
        session, settings, CONNECTED_SECRET, initiator=DEMO_OWNER, return_to=None
    )
    return url


async def _demo_key(accounts: AccountStore) -> str:
    """A fresh key of the `demo` service account (the document declares it and its role)."""
    account = await accounts.service_account(DEMO_ACCOUNT)
    try:
        await accounts.delete_api_key(account, DEMO_KEY_NAME)
    except NotFound:
        pass
    created = await accounts.create_api_key(account, ApiKeyCreate(name=DEMO_KEY_NAME), SYSTEM)
    return created.key
