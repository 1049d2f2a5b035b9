"""HTTP routes of the services domain (managing services; running them lives in `app.runs`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response, status

from app.auth.dependencies import CurrentActor, require
from app.auth.permissions import Permission
from app.dependencies import SessionDep
from app.services.schemas import ServiceBody, ServiceCreate, ServiceRead
from app.services.store import ServiceStore

router = APIRouter(prefix="/v1/services", tags=["services"])
MANAGE = [Depends(require(Permission.SERVICES_MANAGE))]


async def _store(session: SessionDep) -> ServiceStore:
    return ServiceStore(session)


StoreDep = Depends(_store)


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=MANAGE)
async def create_service(
    data: ServiceCreate, actor: CurrentActor, store: ServiceStore = StoreDep
) -> ServiceRead:
    """Create a service with its endpoints; each action is validated before it is saved, and
    every secret it reads needs `secrets.use:NAME` of the caller."""
    return await store.describe(await store.create(data, actor))


@router.get("", dependencies=MANAGE)
async def list_services(store: ServiceStore = StoreDep) -> list[ServiceRead]:
    """List every service with its endpoints."""
    return await store.list_all()


@router.get("/{slug}", dependencies=MANAGE)
async def get_service(slug: str, store: ServiceStore = StoreDep) -> ServiceRead:
    """Show one service with its endpoints and actions."""
    return await store.describe(await store.get(slug))


@router.put("/{slug}", dependencies=MANAGE)
async def replace_service(
    slug: str, data: ServiceBody, actor: CurrentActor, store: ServiceStore = StoreDep
) -> ServiceRead:
    """Replace a service's name, variables and endpoints (validated as on create; every secret
    any endpoint reads needs `secrets.use:NAME` of the caller)."""
    return await store.describe(await store.replace(await store.get(slug), data, actor))


@router.delete("/{slug}", status_code=status.HTTP_204_NO_CONTENT, dependencies=MANAGE)
async def delete_service(slug: str, store: ServiceStore = StoreDep) -> Response:
    """Delete a service and its endpoints (refused while a secret refreshes through it)."""
    await store.delete(await store.get(slug))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
