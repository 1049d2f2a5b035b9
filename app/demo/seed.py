"""The set-up of `tokenfarm demo`: examples/demo.yaml applied against the bundled token server.

The demo is config as code like any other deployment: the document declares the roles, the
accounts, the secrets (values from DEMO_* variables the demo fills from its token server's
client), the canonical refresh and a schedule that rotates the tokens every minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

import app
from app.auth.accounts import AccountStore
from app.auth.actor import Actor
from app.auth.schemas import ApiKeyCreate
from app.config import Settings
from app.configuration.apply import apply_document
from app.configuration.loader import load
from app.configuration.plan import Plan
from app.configuration.values import ValueSource
from app.crypto import Keyring
from app.errors import ConfigurationError, NotFound
from app.secrets.store import SecretStore

SYSTEM = Actor(kind="system", name="demo", permissions=frozenset({"*"}))
DEMO_DOCUMENT = Path(app.__file__).resolve().parent.parent / "examples" / "demo.yaml"
# Where examples/demo.yaml expects the token server; the demo rewrites it for another port.
DOCUMENT_TOKEN_SERVER = "http://127.0.0.1:8765"  # noqa: S105 - an address, not a secret
DEMO_ACCOUNT = "demo"
DEMO_KEY_NAME = "demo"
ROTATING_SECRET = "REFRESH_TOKEN"  # noqa: S105 - a secret's name, not a secret


@dataclass
class DemoSetup:
    """What the demo applied, and the new API key of its `demo` account (shown once)."""

    plan: Plan
    key: str


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
    return DemoSetup(plan=plan, key=await _demo_key(AccountStore(session)))


async def _demo_key(accounts: AccountStore) -> str:
    """A fresh key of the `demo` service account (the document declares it and its role)."""
    account = await accounts.service_account(DEMO_ACCOUNT)
    try:
        await accounts.delete_api_key(account, DEMO_KEY_NAME)
    except NotFound:
        pass
    created = await accounts.create_api_key(account, ApiKeyCreate(name=DEMO_KEY_NAME), SYSTEM)
    return created.key
