"""The rules of providers: filling in a catalog entry, refusing a provider that can't work, and
keeping the table. The store only flushes; the request (or `apply`) commits once.

`definition` and `problems` are the one home of what a provider is and when it can work; the
configuration plan calls them too, so a document is refused for the same reasons as the API.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db import one_or_not_found, utcnow
from app.errors import AlreadyExists, Conflict
from app.presets.binder import invalid
from app.providers.catalog import CATALOG, URL_FIELDS, check_catalog_param
from app.providers.models import Provider
from app.providers.schemas import ProviderCreate, ProviderFields, ProviderRead, ProviderUpdate
from app.secrets.models import Secret

SECRET_FIELDS = ("client_id_secret", "client_secret_secret", "private_key_secret")
# The stored fields, in the order they are shown and compared.
DEFINITION_FIELDS = (
    "description",
    "catalog",
    *URL_FIELDS,
    "client_auth",
    *SECRET_FIELDS,
    "scopes",
    "authorize_params",
    "pkce",
    "refresh_token_reuse_grace_seconds",
)
Problems = list[tuple[str, str]]
# Paths below /v1/providers that are not providers.
RESERVED_NAMES = frozenset({"catalog"})


def definition(data: ProviderFields) -> tuple[dict[str, Any], Problems]:
    """The provider's stored fields (given ones win over the catalog entry's, then defaults),
    and the problems of filling in the catalog's placeholders."""
    entry = CATALOG.get(data.catalog) if data.catalog else None
    found: Problems = []
    values: dict[str, Any] = {"description": data.description or "", "catalog": data.catalog}
    if entry is None:
        for name in data.catalog_params:
            found.append((f"catalog_params.{name}", "catalog params need a catalog entry"))
        for url_field in URL_FIELDS:
            values[url_field] = getattr(data, url_field)
        values.update(
            client_auth=data.client_auth or "basic",
            scopes=list(data.scopes) if data.scopes is not None else [],
            authorize_params=dict(data.authorize_params or {}),
            pkce=True if data.pkce is None else data.pkce,
            refresh_token_reuse_grace_seconds=data.refresh_token_reuse_grace_seconds or 0,
        )
    else:
        for name in data.catalog_params:
            if name not in entry.params:
                known = ", ".join(entry.params) or "none"
                found.append(
                    (f"catalog_params.{name}", f"{entry.name} has no such param (known: {known})")
                )
            elif (why := check_catalog_param(data.catalog_params[name])) is not None:
                found.append((f"catalog_params.{name}", why))
        params = {
            name: data.catalog_params.get(name) or default or ""
            for name, (_, default) in entry.params.items()
        }
        for url_field in URL_FIELDS:
            given = getattr(data, url_field)
            if given is not None:
                values[url_field] = given
                continue
            missing = [name for name in entry.placeholders(url_field) if not params.get(name)]
            for name in missing:
                what = entry.params[name][0]
                found.append(
                    (f"catalog_params.{name}", f"{entry.name} needs it for {url_field}: {what}")
                )
            values[url_field] = None if missing else entry.fill(url_field, params)
        values.update(
            client_auth=data.client_auth or entry.client_auth,
            scopes=list(data.scopes) if data.scopes is not None else list(entry.scopes),
            authorize_params=(
                dict(data.authorize_params)
                if data.authorize_params is not None
                else dict(entry.authorize_params)
            ),
            pkce=entry.pkce if data.pkce is None else data.pkce,
            refresh_token_reuse_grace_seconds=(
                entry.refresh_token_reuse_grace_seconds
                if data.refresh_token_reuse_grace_seconds is None
                else data.refresh_token_reuse_grace_seconds
            ),
        )
    for name in SECRET_FIELDS:
        values[name] = getattr(data, name)
    return values, found


def problems(values: dict[str, Any], known_secrets: Container[str]) -> Problems:
    """Why a provider with these fields can't work (each naming its field), or nothing."""
    found: Problems = []
    for url_field in ("authorization_url", "token_url"):
        if values[url_field] is None and values["issuer"] is None:
            found.append(
                (
                    url_field,
                    f"give {url_field} or an issuer (whose discovery document names it), "
                    "or a catalog entry that has one",
                )
            )
    client_auth = values["client_auth"]
    if values["client_id_secret"] is None:
        found.append(("client_id_secret", "name the secret that holds the client id"))
    if client_auth == "none":
        if values["client_secret_secret"] is not None:
            found.append(
                (
                    "client_secret_secret",
                    "a public client (client_auth none) sends no client secret; remove it, "
                    "or choose client_auth basic or post",
                )
            )
        if not values["pkce"]:
            found.append(
                ("pkce", "a public client (client_auth none) must use PKCE (RFC 9700 §2.1.1)")
            )
    elif client_auth in ("basic", "post"):
        if values["client_secret_secret"] is None:
            found.append(
                (
                    "client_secret_secret",
                    f"client_auth {client_auth} needs the secret that holds the client secret",
                )
            )
    elif client_auth == "private_key_jwt":
        if values["private_key_secret"] is None:
            found.append(
                ("private_key_secret", "client_auth private_key_jwt needs the private key's secret")
            )
        if values["client_secret_secret"] is not None:
            found.append(("client_secret_secret", "private_key_jwt sends no client secret"))
    if client_auth != "private_key_jwt" and values["private_key_secret"] is not None:
        found.append(("private_key_secret", "goes with client_auth private_key_jwt only"))
    for name in SECRET_FIELDS:
        secret = values[name]
        if secret is not None and secret not in known_secrets:
            found.append((name, f"secret {secret!r} does not exist"))
    return found


def warnings(values: dict[str, Any]) -> list[str]:
    """What works but is not advised."""
    if not values["pkce"] and values["client_auth"] != "none":
        return [
            "pkce is off: RFC 9700 advises PKCE for confidential clients too (it stops "
            "authorization code injection); turn it off only for a server that refuses it"
        ]
    return []


def describe(provider: Provider) -> ProviderRead:
    """The provider as the API shows it."""
    values = {name: getattr(provider, name) for name in DEFINITION_FIELDS}
    return ProviderRead(
        name=provider.name,
        **values,
        warnings=warnings(values),
        created_at=provider.created_at,
        updated_at=provider.updated_at,
    )


class ProviderStore:
    """Providers for one session; it only flushes, the request commits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, name: str) -> Provider:
        """A provider by name, or NotFound."""
        query = select(Provider).where(col(Provider.name) == name)
        return await one_or_not_found(self.session, query, f"provider {name!r}")

    async def list_all(self) -> list[Provider]:
        """Every provider, by name."""
        query = select(Provider).order_by(col(Provider.name))
        return list((await self.session.execute(query)).scalars().all())

    async def _checked(self, data: ProviderFields) -> dict[str, Any]:
        """The filled-in fields, or a 422 listing every problem."""
        values, found = definition(data)
        named = [values[name] for name in SECRET_FIELDS if values[name] is not None]
        existing: set[str] = set()
        if named:
            query = select(col(Secret.name)).where(col(Secret.name).in_(named))
            existing = set((await self.session.execute(query)).scalars())
        found += problems(values, existing)
        if found:
            raise invalid(found)
        return values

    async def create(self, data: ProviderCreate) -> Provider:
        """A new provider, or a 422 naming what keeps it from working."""
        if data.name in RESERVED_NAMES:
            raise invalid([("name", f"{data.name!r} is taken by GET /v1/providers/{data.name}")])
        provider = Provider(name=data.name, **await self._checked(data))
        self.session.add(provider)
        try:
            await self.session.flush()
        except IntegrityError:
            raise AlreadyExists(f"provider {data.name!r} already exists") from None
        return provider

    async def replace(self, provider: Provider, data: ProviderUpdate) -> Provider:
        """Replace a provider's definition with `data` (filled in as on create)."""
        for name, value in (await self._checked(data)).items():
            setattr(provider, name, value)
        provider.updated_at = utcnow()
        await self.session.flush()
        return provider

    async def delete(self, provider: Provider) -> None:
        """Delete a provider no connected secret uses (else 409 naming them)."""
        users = await self.connected_secrets(provider.name)
        if users:
            raise Conflict(
                f"provider {provider.name!r} is used by connected secret(s) "
                f"{', '.join(users)}; delete or disconnect them first",
                secrets=users,
            )
        await self.session.delete(provider)
        await self.session.flush()

    async def connected_secrets(self, name: str) -> list[str]:
        """The secrets connected through provider `name` (the `secret.provider` column).

        The column comes with the connected secrets (migration 0010); until it exists no secret
        can use a provider.
        """
        column = getattr(Secret, "provider", None)
        if column is None:
            return []
        query = select(col(Secret.name)).where(column == name).order_by(col(Secret.name))
        return list((await self.session.execute(query)).scalars())
