"""Creating a connected secret: the secret, its hidden companion, its refresher, all in the
request's one transaction.

The refresher is an ordinary, editable action (the `oauth2_refresh_token` preset through the
preset binder, so it is validated and authorized as any bound preset), reading the refresh
token from the companion and writing a rotated one back. Expiry-driven refresh is on by default:
the secret refreshes as the `connect-refresher` account (app/connect/refresher.py) unless its
creator named a `refresh_as`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.actor import Actor
from app.config import Settings
from app.connect.refresher import grant_refresher
from app.crypto import Keyring
from app.errors import Conflict, InvalidInput, NotFound
from app.outbound import Outbound
from app.pipeline.wire import origin_of_url
from app.presets.binder import PresetBinder
from app.presets.schemas import RefresherRequest
from app.providers.resolve import ResolvedProvider, resolve_provider
from app.secrets.models import Secret
from app.secrets.rules import companion_name
from app.secrets.schemas import SecretCreate, SecretUpdate
from app.secrets.store import SecretStore

MAX_CONNECTED_NAME = 128 - len(companion_name(""))


def refresher_params(provider: ResolvedProvider, companion: str) -> dict[str, Any]:
    """The `oauth2_refresh_token` preset's params for a provider (names of secrets, no values)."""
    params: dict[str, Any] = {
        "token_url": provider.token_url,
        "client_id_secret": provider.client_id_secret,
        "client_auth": provider.client_auth,
        "refresh_token_secret": companion,
    }
    if provider.client_auth in ("basic", "post"):
        params["client_secret_secret"] = provider.client_secret_secret
    if provider.client_auth == "private_key_jwt":
        params["private_key_secret"] = provider.private_key_secret
    if provider.refresh_token_reuse_grace_seconds > 0:
        # Only a server that accepts a spent refresh token for a while may see it twice.
        params["reuse_grace"] = True
    return params


async def _provider(
    session: AsyncSession, name: str, outbound: Outbound | None
) -> ResolvedProvider:
    """The provider, or a 422 naming `provider` (a missing one, one without a token endpoint)."""
    try:
        provider = await resolve_provider(session, name, outbound)
    except NotFound:
        raise InvalidInput(
            f"provider: no provider {name!r} (see GET /v1/providers)", path="provider"
        ) from None
    if provider.token_url is None:
        raise InvalidInput(
            f"provider: {name!r} has no token endpoint (set its token_url or issuer)",
            path="provider",
        )
    if provider.authorization_url is None and provider.device_authorization_url is None:
        raise InvalidInput(
            f"provider: {name!r} has neither an authorization_url nor a "
            "device_authorization_url, so nobody could connect it",
            path="provider",
        )
    return provider


async def create_connected(
    session: AsyncSession,
    keyring: Keyring,
    settings: Settings,
    data: SecretCreate,
    caller: Actor,
    outbound: Outbound | None = None,
) -> Secret:
    """Create a connected secret (`data.provider` set): the secret, its companion, its bound
    refresher and expiry-driven refresh. It has no value until someone connects it."""
    assert data.provider is not None
    if data.value is not None:
        raise InvalidInput(
            "value: a connected secret gets its value by connecting "
            f"(POST /v1/secrets/{data.name}/connect-links); leave 'value' out",
            path="value",
        )
    if not data.environment_specific or data.locked:
        raise InvalidInput(
            "a connected secret is refreshed by a run, so it must be environment-specific and "
            "unlocked",
            path="environment_specific" if not data.environment_specific else "locked",
        )
    if data.refresh_endpoint is not None:
        raise InvalidInput(
            "refresh_endpoint: a connected secret is bound to a refresher of its own "
            f"(refreshers/{data.name}); leave it out and edit that action instead",
            path="refresh_endpoint",
        )
    if len(data.name) > MAX_CONNECTED_NAME:
        raise InvalidInput(
            f"name: a connected secret's name has at most {MAX_CONNECTED_NAME} characters "
            f"(its refresh token is kept as {companion_name('NAME')!r})",
            path="name",
        )
    provider = await _provider(session, data.provider, outbound)
    store = SecretStore(session, keyring, settings)
    hidden = companion_name(data.name)
    try:
        await store.get(hidden)
    except NotFound:
        pass
    else:
        raise Conflict(
            f"secret {hidden!r} already exists; a connected secret {data.name!r} keeps its "
            "refresh token under that name (rename or delete it, or choose another name)"
        )
    secret = await store.create(
        data.model_copy(update={"provider": None, "scopes": None}), caller.label, caller=caller
    )
    secret.provider = provider.name
    secret.scopes = data.scopes
    token_origin = origin_of_url(provider.token_url or "")
    companion = Secret(
        name=hidden,
        description=f"Refresh token of the connected secret {data.name} (kept by tokenfarm).",
        companion_of=secret.id,
        # It goes to the token endpoint and nowhere else.
        allowed_destinations=[token_origin],
    )
    session.add(companion)
    await session.flush()
    binder = PresetBinder(session, keyring, settings)
    bound = await binder.bind(
        data.name,
        RefresherRequest(preset="oauth2_refresh_token", params=refresher_params(provider, hidden)),
        caller,
    )
    if data.refresh_as is None:
        account = await grant_refresher(session, bound.refresh_endpoint, [data.name, hidden])
        await store.update(secret, SecretUpdate(refresh_as=account))  # the system's choice
    return secret
