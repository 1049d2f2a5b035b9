"""HTTP routes of webhooks; every one needs `webhooks.manage`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request, Response, status

from app.auth.dependencies import CurrentActor, require
from app.auth.permissions import Permission
from app.dependencies import KeyringDep, SessionDep, SettingsDep
from app.notifications.notifier import Notifier
from app.notifications.schemas import (
    WEBHOOK_NAME_PATTERN,
    PingResult,
    SecretRotation,
    WebhookCreate,
    WebhookRead,
    WebhookUpdate,
    WebhookWithSecret,
)
from app.notifications.store import WebhookStore

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
MANAGE = [Depends(require(Permission.WEBHOOKS_MANAGE))]
NamePath = Annotated[str, Path(pattern=WEBHOOK_NAME_PATTERN, examples=["ops-alerts"])]


async def _store(session: SessionDep, keyring: KeyringDep, settings: SettingsDep) -> WebhookStore:
    return WebhookStore(session, keyring, settings)


async def _notifier(request: Request) -> Notifier:
    notifier: Notifier = request.app.state.notifier
    return notifier


StoreDep = Depends(_store)
NotifierDep = Annotated[Notifier, Depends(_notifier)]


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=MANAGE)
async def create_webhook(
    data: WebhookCreate, actor: CurrentActor, store: WebhookStore = StoreDep
) -> WebhookWithSecret:
    """Create a webhook; the answer shows its signing secret, this once."""
    webhook, signing_secret = await store.create(data, actor)
    return store.describe_with_secret(webhook, signing_secret)


@router.get("", dependencies=MANAGE)
async def list_webhooks(store: WebhookStore = StoreDep) -> list[WebhookRead]:
    """Every webhook (without signing secrets) and how its last delivery went."""
    return [store.describe(webhook) for webhook in await store.list_all()]


@router.get("/{name}", dependencies=MANAGE)
async def get_webhook(name: NamePath, store: WebhookStore = StoreDep) -> WebhookRead:
    """One webhook (without its signing secret) and how its last delivery went."""
    return store.describe(await store.get(name))


@router.patch("/{name}", dependencies=MANAGE)
async def update_webhook(
    name: NamePath, data: WebhookUpdate, store: WebhookStore = StoreDep
) -> WebhookWithSecret:
    """Change a webhook; `rotate_secret: true` answers a new signing secret, this once."""
    webhook, signing_secret = await store.update(await store.get(name), data)
    return store.describe_with_secret(webhook, signing_secret)


@router.post("/{name}/rotate-secret", dependencies=MANAGE)
async def rotate_webhook_secret(
    name: NamePath,
    data: Annotated[SecretRotation | None, Body()] = None,
    store: WebhookStore = StoreDep,
) -> WebhookWithSecret:
    """Make a new signing secret (answered this once); deliveries are signed with the replaced
    one too for `grace_seconds` (default a day), so receivers can switch without a gap."""
    webhook, signing_secret = await store.rotate_secret(
        await store.get(name), data or SecretRotation()
    )
    return store.describe_with_secret(webhook, signing_secret)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=MANAGE)
async def delete_webhook(name: NamePath, store: WebhookStore = StoreDep) -> Response:
    """Delete a webhook; its pending retries stop."""
    await store.delete(await store.get(name))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/test", dependencies=MANAGE)
async def test_webhook(name: NamePath, notifier: NotifierDep) -> PingResult:
    """Send a signed `ping` now (once, even when disabled) and answer how the receiver took it."""
    return await notifier.ping(name)
