"""HTTP routes of a secret's connection besides the browser flow: the device grant (RFC 8628)
and disconnect (RFC 7009 revocation, then local clearing)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status

from app.auth.actor import ensure, refuse
from app.auth.dependencies import CurrentActor
from app.auth.permissions import Permission, secret_connect
from app.connect.connection import disconnect, start_device_authorization
from app.connect.connection_schemas import (
    DeviceAuthorizationStarted,
    DeviceAuthorizationStatus,
    DisconnectedRead,
    RevocationRead,
)
from app.connect.device import DevicePolls
from app.dependencies import KeyringDep, SettingsDep
from app.errors import NotFound
from app.schemas import ErrorResponse

router = APIRouter(prefix="/v1/secrets", tags=["connections"])


def _errors(codes: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": text} for code, text in codes.items()}


def _polls(request: Request) -> DevicePolls:
    polls: DevicePolls = request.app.state.device_polls
    return polls


@router.post(
    "/{name}/device-authorizations",
    status_code=status.HTTP_201_CREATED,
    responses=_errors(
        {
            403: "`secrets.connect:NAME` is missing",
            404: "No such secret",
            409: "Not a connected secret, or its provider has no device authorization endpoint",
            422: "The provider's client credentials are missing",
            502: "The provider refused or failed (its OAuth error is named)",
        }
    ),
)
async def start_device_grant(
    name: str, request: Request, actor: CurrentActor, keyring: KeyringDep, settings: SettingsDep
) -> DeviceAuthorizationStarted:
    """Connect a secret with a user code (RFC 8628): show `user_code` and `verification_uri` to
    the person who consents; tokenfarm polls the provider and stores the tokens itself."""
    ensure(actor, secret_connect(name))
    state = request.app.state
    flow = await start_device_authorization(
        state.session_factory,
        keyring,
        settings,
        state.runner.outbound,
        _polls(request),
        name,
        actor=actor.label,
    )
    authorization = flow.authorization
    return DeviceAuthorizationStarted(
        id=flow.id,
        user_code=authorization.user_code,
        verification_uri=authorization.verification_uri,
        verification_uri_complete=authorization.verification_uri_complete,
        expires_in=authorization.expires_in,
        interval=authorization.interval,
        status_url=f"/v1/secrets/{name}/device-authorizations/{flow.id}",
    )


@router.get(
    "/{name}/device-authorizations/{flow_id}",
    responses=_errors(
        {
            403: "`secrets.connect:NAME` is missing",
            404: "This server started no such device authorization (or forgot it after an hour)",
        }
    ),
)
async def device_grant_status(
    name: str, flow_id: str, request: Request, actor: CurrentActor
) -> DeviceAuthorizationStatus:
    """How a device grant is going: `pending` until the person decides, then `connected`,
    `denied`, `expired` or `failed` (with a message)."""
    ensure(actor, secret_connect(name))
    flow = _polls(request).status(flow_id)
    if flow is None or flow.secret != name:
        raise NotFound(
            f"no device authorization {flow_id!r} for secret {name!r} on this server (it may "
            "have ended over an hour ago, or this server restarted): check the secret itself "
            f"with GET /v1/secrets/{name}"
        )
    return DeviceAuthorizationStatus(
        id=flow.id, secret=flow.secret, status=flow.status, message=flow.message
    )


@router.delete(
    "/{name}/connection",
    responses=_errors(
        {
            403: "Both `secrets.connect:NAME` and `secrets.manage` are missing",
            404: "No such secret",
            409: "Not a connected secret",
        }
    ),
)
async def disconnect_secret(
    name: str, request: Request, actor: CurrentActor, keyring: KeyringDep, settings: SettingsDep
) -> DisconnectedRead:
    """Disconnect: revoke the refresh token at the provider (RFC 7009) when it has a revocation
    endpoint, then clear the tokens (a version records it). A failed revocation is reported in
    `revocation` and the secret is disconnected all the same."""
    wanted = secret_connect(name)
    if not (actor.can(wanted) or actor.can(Permission.SECRETS_MANAGE)):
        refuse(actor, wanted, f" or {Permission.SECRETS_MANAGE.value!r}")
    state = request.app.state
    done = await disconnect(
        state.session_factory, keyring, settings, state.runner.outbound, name, actor=actor.label
    )
    revocation = done.revocation
    return DisconnectedRead(
        secret=done.secret,
        revocation=RevocationRead(
            attempted=revocation.attempted, revoked=revocation.revoked, message=revocation.message
        ),
    )
