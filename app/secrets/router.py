"""HTTP routes of the secrets domain: thin, authorized, never returning a table object."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response, status

from app.auth.dependencies import CurrentActor, ensure, require
from app.config import Environment
from app.dependencies import KeyringDep, SessionDep, SettingsDep
from app.secrets.schemas import (
    RollbackRequest,
    SecretCreate,
    SecretRead,
    SecretUpdate,
    SecretValueRead,
    SecretValueWrite,
    SecretVersionRead,
    ValueWritten,
)
from app.secrets.store import SecretStore

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])
MANAGE = [Depends(require("secrets.manage"))]
NAME_PATH = {"examples": ["ACCESS_TOKEN"]}
ENVIRONMENT_QUERY = Query(None, description="Default: the service's environment.")


def _store(session: SessionDep, keyring: KeyringDep, settings: SettingsDep) -> SecretStore:
    return SecretStore(session, keyring, settings)


StoreDep = Depends(_store)


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=MANAGE)
async def create_secret(
    data: SecretCreate, actor: CurrentActor, store: SecretStore = StoreDep
) -> SecretRead:
    """Create a secret, optionally with its first value."""
    secret = await store.create(data, actor.label)
    return await store.describe(secret)


@router.get("", dependencies=MANAGE)
async def list_secrets(store: SecretStore = StoreDep) -> list[SecretRead]:
    """List every secret's metadata (never values)."""
    return await store.list_all()


@router.get("/{name}", dependencies=MANAGE)
async def get_secret(name: str, store: SecretStore = StoreDep) -> SecretRead:
    """Show one secret's metadata: status, expiry, version, refresh endpoint."""
    return await store.describe(await store.get(name))


@router.patch("/{name}", dependencies=MANAGE)
async def update_secret(name: str, data: SecretUpdate, store: SecretStore = StoreDep) -> SecretRead:
    """Change a secret's description, lock, refresh endpoint or environment-specific flag."""
    secret = await store.update(await store.get(name), data)
    return await store.describe(secret)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=MANAGE)
async def delete_secret(name: str, store: SecretStore = StoreDep) -> Response:
    """Delete a secret with all its values and history."""
    await store.delete(await store.get(name))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/{name}/value", dependencies=MANAGE)
async def set_secret_value(
    name: str, data: SecretValueWrite, actor: CurrentActor, store: SecretStore = StoreDep
) -> ValueWritten:
    """Set a value by hand (a new version); answers the version, never the value."""
    secret = await store.get(name)
    return await store.set_value(
        secret,
        data.value,
        environment=data.environment,
        expires_at=data.expires_at,
        actor=actor.label,
        source="manual",
    )


@router.get("/{name}/value")
async def read_secret_value(
    name: str,
    actor: CurrentActor,
    environment: Environment | None = ENVIRONMENT_QUERY,
    store: SecretStore = StoreDep,
) -> SecretValueRead:
    """Read the current value; needs `secrets.read:NAME`."""
    ensure(actor, f"secrets.read:{name}")
    return await store.read_value(await store.get(name), environment)


@router.get("/{name}/versions", dependencies=MANAGE)
async def list_secret_versions(
    name: str,
    environment: Environment | None = ENVIRONMENT_QUERY,
    store: SecretStore = StoreDep,
) -> list[SecretVersionRead]:
    """The history of a secret's value, newest first (no values)."""
    return await store.versions(await store.get(name), environment)


@router.post("/{name}/rollback", dependencies=MANAGE)
async def rollback_secret(
    name: str, data: RollbackRequest, actor: CurrentActor, store: SecretStore = StoreDep
) -> ValueWritten:
    """Make an earlier version current again (written as a new version)."""
    secret = await store.get(name)
    return await store.rollback(secret, data.version, data.environment, actor.label)
