"""Storing a connection: THE one home for what a successful connect (authorization code, device
grant) writes, and for clearing it (disconnect).

A connected secret's value is the access token; its refresh token lives in the hidden companion
secret `NAME__refresh_token` (app/secrets/rules.py), an ordinary secret row, so encryption,
versions, the runner's storing and redaction all apply to it unchanged. Callers own the
transaction: these functions only flush, so a connection is stored whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.config import Settings
from app.crypto import Keyring
from app.db import utcnow
from app.errors import Conflict, NotFound
from app.events import SecretConnected, emit_after_commit
from app.secrets.models import Secret, SecretValue, SecretVersion
from app.secrets.store import SecretStore

MAX_CONNECTED_BY_CHARS = 320


@dataclass(frozen=True)
class TokenSet:
    """What a token endpoint answered to a code exchange or a device grant."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_in: int | None  # seconds, from the token answer
    scope: str | None  # granted scopes as the server answered them
    id_token_claims: dict[str, Any] | None = None  # VERIFIED claims only (sub, email, ...)

    @classmethod
    def from_answer(
        cls, answer: dict[str, Any], id_token_claims: dict[str, Any] | None = None
    ) -> TokenSet:
        """The token set of a token endpoint's JSON answer (RFC 6749 §5.1); ValueError when it
        carries no access token (the message quotes no value)."""
        access_token = answer.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise ValueError("the token endpoint answered without an access_token")
        refresh_token = answer.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            refresh_token = None
        expires_in = answer.get("expires_in")
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)
        scope = answer.get("scope")
        return cls(
            access_token=access_token,
            refresh_token=refresh_token,
            expires_in=expires_in if isinstance(expires_in, int) and expires_in > 0 else None,
            scope=scope if isinstance(scope, str) else None,
            id_token_claims=id_token_claims,
        )


async def connected_secret(session: AsyncSession, name: str) -> tuple[Secret, Secret]:
    """A connected secret and its hidden companion; NotFound / Conflict saying what is wrong."""
    secret = (
        await session.execute(select(Secret).where(col(Secret.name) == name))
    ).scalar_one_or_none()
    if secret is None or secret.companion_of is not None:
        raise NotFound(f"secret {name!r} does not exist")
    companion = (
        await session.execute(select(Secret).where(col(Secret.companion_of) == secret.id))
    ).scalar_one_or_none()
    if secret.provider is None or companion is None:
        raise Conflict(
            f'secret {name!r} is not a connected secret (create it with "provider" to connect it)'
        )
    return secret, companion


def _who(tokens: TokenSet, actor: str) -> str:
    """Who connected: the verified ID token's email, else its subject, else who started it."""
    claims = tokens.id_token_claims or {}
    for key in ("email", "sub"):
        value = claims.get(key)
        if isinstance(value, str) and value:
            return f"{value} (via {actor})"[:MAX_CONNECTED_BY_CHARS]
    return actor[:MAX_CONNECTED_BY_CHARS]


async def store_connection(
    session: AsyncSession,
    keyring: Keyring,
    settings: Settings,
    secret_name: str,
    tokens: TokenSet,
    *,
    how: str,
    actor: str,
) -> None:
    """Store a connection in the caller's transaction: the access token as a new version of the
    secret (with its expiry), the refresh token as a new version of the companion (kept as it
    is when the answer has none), granted scopes and who connected; the status goes back to
    `ok` (a `connect` write is a fresh start) and `secret.connected` is emitted after commit.

    `how`: `authorization_code` or `device_code`; `actor`: who started the flow (`user:…`).
    """
    secret, companion = await connected_secret(session, secret_name)
    store = SecretStore(session, keyring, settings)
    old_status = secret.status
    label = f"connect:{actor}"
    if tokens.refresh_token is not None:
        await store.set_value(companion, tokens.refresh_token, actor=label, source="connect")
    expires_at = None
    if tokens.expires_in is not None:
        expires_at = utcnow() + timedelta(seconds=tokens.expires_in)
    written = await store.set_value(
        secret, tokens.access_token, expires_at=expires_at, actor=label, source="connect"
    )
    if tokens.scope is not None:
        secret.scopes = tokens.scope.split()
    secret.connected_by = _who(tokens, actor)
    await session.flush()
    emit_after_commit(
        session,
        SecretConnected(
            secret=secret.name,
            how=how,
            previous_status=old_status,
            version=written.version,
            connected_by=secret.connected_by,
            at=utcnow(),
        ),
    )


async def clear_connection(
    session: AsyncSession, keyring: Keyring, settings: Settings, secret_name: str, *, actor: str
) -> None:
    """Disconnect, in the caller's transaction: each value of the secret and its companion is
    cleared (nothing to read or refresh any more), a `disconnect` version records it in the
    history (it holds no token), and who connected is forgotten. Connecting again writes the
    next version."""
    secret, companion = await connected_secret(session, secret_name)
    now = utcnow()
    for row in (secret, companion):
        values = (
            (await session.execute(select(SecretValue).where(col(SecretValue.secret_id) == row.id)))
            .scalars()
            .all()
        )
        for value in values:
            session.add(
                SecretVersion(
                    secret_id=value.secret_id,
                    environment=value.environment,
                    version=value.version + 1,
                    ciphertext=keyring.encrypt(None),
                    expires_at=None,
                    source="disconnect",
                    actor=f"disconnect:{actor}",
                    created_at=now,
                )
            )
        await session.execute(delete(SecretValue).where(col(SecretValue.secret_id) == row.id))
    secret.connected_by = None
    secret.updated_at = now
    await session.flush()


async def refresh_token_of(
    session: AsyncSession, keyring: Keyring, settings: Settings, secret_name: str
) -> str | None:
    """The current refresh token of a connected secret (None: it has none), for revocation
    (RFC 7009) only: no route returns it."""
    _, companion = await connected_secret(session, secret_name)
    _, current = await SecretStore(session, keyring, settings).get_current(companion.name)
    if current is None:
        return None
    value = keyring.decrypt(current.ciphertext)
    return value if isinstance(value, str) else None
