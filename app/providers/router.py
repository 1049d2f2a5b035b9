"""HTTP routes of providers; every one needs `providers.manage`.

Reading is `providers.manage` too: a provider names the secrets that hold its credentials, and
those who connect secrets never need to see it (connecting is `secrets.connect:NAME`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response, status

from app.auth.dependencies import require
from app.auth.permissions import Permission
from app.dependencies import OutboundDep, SessionDep
from app.providers.catalog import ENTRIES, describe_entry
from app.providers.resolve import ENDPOINT_FIELDS, resolve_row
from app.providers.schemas import (
    PROVIDER_NAME_PATTERN,
    CatalogEntryRead,
    ProviderCreate,
    ProviderRead,
    ProviderUpdate,
    ResolvedEndpoints,
)
from app.providers.store import ProviderStore, describe

router = APIRouter(prefix="/v1/providers", tags=["providers"])
MANAGE = [Depends(require(Permission.PROVIDERS_MANAGE))]
NamePath = Annotated[str, Path(pattern=PROVIDER_NAME_PATTERN, examples=["google"])]


async def _store(session: SessionDep) -> ProviderStore:
    return ProviderStore(session)


StoreDep = Annotated[ProviderStore, Depends(_store)]


@router.get("/catalog", dependencies=MANAGE)
async def list_catalog() -> list[CatalogEntryRead]:
    """The well-known providers a provider can be made from (`catalog`), with their quirks."""
    return [CatalogEntryRead.model_validate(describe_entry(entry)) for entry in ENTRIES]


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=MANAGE)
async def create_provider(data: ProviderCreate, store: StoreDep) -> ProviderRead:
    """Create a provider; a catalog entry fills what the body leaves out."""
    return describe(await store.create(data))


@router.get("", dependencies=MANAGE)
async def list_providers(store: StoreDep) -> list[ProviderRead]:
    """Every provider, by name."""
    return [describe(provider) for provider in await store.list_all()]


@router.get("/{name}", dependencies=MANAGE)
async def get_provider(name: NamePath, store: StoreDep) -> ProviderRead:
    """One provider as stored."""
    return describe(await store.get(name))


@router.get("/{name}/endpoints", dependencies=MANAGE)
async def get_provider_endpoints(
    name: NamePath, session: SessionDep, store: StoreDep, outbound: OutboundDep
) -> ResolvedEndpoints:
    """The endpoints the connect flow will use, running discovery now (502 when it fails)."""
    row = await store.get(name)
    await session.commit()  # no transaction stays open across the fetch
    resolved = await resolve_row(row, outbound)
    return ResolvedEndpoints(
        name=resolved.name,
        issuer=resolved.issuer,
        **{field: getattr(resolved, field) for field in ENDPOINT_FIELDS},
    )


@router.put("/{name}", dependencies=MANAGE)
async def replace_provider(name: NamePath, data: ProviderUpdate, store: StoreDep) -> ProviderRead:
    """Replace a provider's definition (fields left out are filled as on create)."""
    return describe(await store.replace(await store.get(name), data))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=MANAGE)
async def delete_provider(name: NamePath, store: StoreDep) -> Response:
    """Delete a provider that no connected secret uses (409 naming them otherwise)."""
    await store.delete(await store.get(name))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
