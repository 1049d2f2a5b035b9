"""A connected secret's connection, besides the browser flow: starting a device grant and
disconnecting (revoke at the provider, then clear locally).

Each opens its own short transactions around the provider calls, so none stays open across an
outbound request: read what the call needs, call, then write in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connect.client import client_credentials
from app.connect.device import DeviceFlow, DevicePolls, request_device_authorization
from app.connect.revoke import NOT_ATTEMPTED_NO_TOKEN, Revocation, revoke_refresh_token
from app.connect.tokens import clear_connection, connected_secret, refresh_token_of
from app.crypto import Keyring
from app.errors import Conflict, TokenfarmError
from app.outbound import Outbound
from app.providers.resolve import resolve_provider


async def start_device_authorization(
    session_factory: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    settings: Settings,
    outbound: Outbound,
    polls: DevicePolls,
    name: str,
    *,
    actor: str,
) -> DeviceFlow:
    """Ask the secret's provider for a user code and poll for the tokens in the background.

    409 when the provider has no device authorization endpoint (it says how to connect
    instead); the provider's refusal is a 502 naming its error.
    """
    async with session_factory() as session, session.begin():
        secret, _ = await connected_secret(session, name)
        assert secret.provider is not None  # connected_secret checked it
        provider = await resolve_provider(session, secret.provider, outbound)
        if provider.device_authorization_url is None:
            raise Conflict(
                f"provider {provider.name!r} has no device authorization endpoint, so secret "
                f"{name!r} can't be connected with a user code: set device_authorization_url "
                f"on the provider (PUT /v1/providers/{provider.name}), or connect in a browser "
                f"(POST /v1/secrets/{name}/connect-links)",
                provider=provider.name,
            )
        credentials = await client_credentials(session, keyring, settings, provider)
        scopes = list(secret.scopes or provider.scopes)
    authorization = await request_device_authorization(outbound, credentials, provider, scopes)
    return polls.start(name, provider, credentials, authorization, actor=actor)


@dataclass(frozen=True)
class Disconnected:
    """What a disconnect did: the tokens are cleared; `revocation` says what the provider did."""

    secret: str
    revocation: Revocation


async def disconnect(
    session_factory: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    settings: Settings,
    outbound: Outbound,
    name: str,
    *,
    actor: str,
) -> Disconnected:
    """Revoke the refresh token at the provider (RFC 7009) when it has a revocation endpoint,
    then clear the tokens in one transaction; a failed revocation still disconnects."""
    revocation = NOT_ATTEMPTED_NO_TOKEN
    async with session_factory() as session, session.begin():
        secret, _ = await connected_secret(session, name)
        assert secret.provider is not None  # connected_secret checked it
        refresh_token = await refresh_token_of(session, keyring, settings, name)
        credentials = None
        if refresh_token is not None:
            try:
                provider = await resolve_provider(session, secret.provider, outbound)
                credentials = await client_credentials(session, keyring, settings, provider)
            except TokenfarmError as exc:
                revocation = Revocation(
                    attempted=False,
                    revoked=False,
                    message=f"not revoked at the provider: {exc.message}",
                )
    if refresh_token is not None and credentials is not None:
        revocation = await revoke_refresh_token(outbound, credentials, provider, refresh_token)
    async with session_factory() as session, session.begin():
        await clear_connection(session, keyring, settings, name, actor=actor)
    return Disconnected(secret=name, revocation=revocation)
