"""HTTP routes of the presets: the catalog, and binding a preset to a secret."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.auth.dependencies import CurrentActor, require
from app.auth.permissions import Permission
from app.dependencies import KeyringDep, SessionDep, SettingsDep
from app.presets.binder import PresetBinder
from app.presets.catalog import PRESETS
from app.presets.schemas import PresetRead, RefresherRead, RefresherRequest

router = APIRouter(tags=["presets"])
# Binding writes an endpoint (services.manage) and the secret's refresh_endpoint
# (secrets.manage, as PATCH /v1/secrets/{name} needs): the caller must be allowed both.
BIND = [Depends(require(Permission.SERVICES_MANAGE)), Depends(require(Permission.SECRETS_MANAGE))]


async def _binder(session: SessionDep, keyring: KeyringDep, settings: SettingsDep) -> PresetBinder:
    return PresetBinder(session, keyring, settings)


BinderDep = Depends(_binder)


@router.get("/v1/presets", dependencies=[Depends(require(Permission.SERVICES_MANAGE))])
async def list_presets() -> list[PresetRead]:
    """The presets, each with the JSON schema of its params."""
    return [
        PresetRead(
            name=preset.name,
            description=preset.description,
            params_schema=preset.params.model_json_schema(),
        )
        for preset in PRESETS.values()
    ]


@router.post("/v1/secrets/{name}/refresher", dependencies=BIND)
async def bind_refresher(
    name: str, data: RefresherRequest, actor: CurrentActor, binder: PresetBinder = BinderDep
) -> RefresherRead:
    """Expand a preset into an editable action at `refreshers/{name}` and bind the secret to it.

    Binding again replaces that action. Params name secrets (which must exist), never values;
    the caller needs `secrets.use:NAME` of every secret the action reads.
    """
    return await binder.bind(name, data, actor)
