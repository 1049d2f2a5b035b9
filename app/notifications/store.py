"""The rules of webhooks: validation, signing secrets (encrypted, shown once, rotated with a grace
period), matching events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.auth.actor import Actor
from app.config import Settings
from app.crypto import Keyring
from app.db import one_or_not_found, utcnow
from app.errors import AlreadyExists, Conflict, InvalidInput
from app.notifications.models import Webhook
from app.notifications.schemas import (
    EVENT_TYPES,
    SecretRotation,
    WebhookCreate,
    WebhookRead,
    WebhookUpdate,
    WebhookWithSecret,
)
from app.notifications.signing import new_signing_secret
from app.outbound import ALLOW_SETTING, EgressAllowList, literal_address
from app.secrets.models import Secret


def pack_events(events: list[str]) -> str:
    """`["secret.recovered", "secret.failing"]` -> `"secret.failing,secret.recovered"`."""
    return ",".join(event for event in EVENT_TYPES if event in set(events))


def unpack_events(packed: str) -> list[str]:
    """The inverse of `pack_events`."""
    return [event for event in packed.split(",") if event]


def pack_signing_secrets(signing_secrets: list[str]) -> str:
    """The plaintext of `signing_secret_ciphertext`: the secrets, newest first, space-separated
    (neither form of a signing secret has a space)."""
    return " ".join(signing_secrets)


@dataclass(frozen=True)
class DeliveryTarget:
    """What a delivery needs of a webhook: where, and the secrets to sign with, newest first
    (the one a rotation replaced while its grace period lasts); never logged."""

    webhook_id: int
    name: str
    url: str
    signing_secrets: tuple[str, ...]

    def __repr__(self) -> str:
        return f"DeliveryTarget(name={self.name!r}, signing_secrets=<redacted>)"


def previous_secret_valid_until(webhook: Webhook, now: datetime) -> datetime | None:
    """Until when the secret a rotation replaced still signs, or None (none, or its time is up)."""
    expires_at = webhook.previous_secret_expires_at
    return expires_at if expires_at is not None and expires_at > now else None


class WebhookStore:
    """Webhooks for one session; it only flushes, the request commits."""

    def __init__(self, session: AsyncSession, keyring: Keyring, settings: Settings) -> None:
        self.session = session
        self.keyring = keyring
        self.settings = settings

    async def get(self, name: str) -> Webhook:
        """A webhook by name, or NotFound."""
        query = select(Webhook).where(col(Webhook.name) == name)
        return await one_or_not_found(self.session, query, f"webhook {name!r}")

    async def list_all(self) -> list[Webhook]:
        """Every webhook, by name."""
        query = select(Webhook).order_by(col(Webhook.name))
        return list((await self.session.execute(query)).scalars().all())

    async def _check_secret(self, name: str) -> None:
        """A per-secret webhook must name a secret that exists."""
        query = select(col(Secret.id)).where(col(Secret.name) == name)
        if (await self.session.execute(query)).first() is None:
            raise InvalidInput(f"secret_name: no secret {name!r}", path="secret_name")

    def _check_url(self, url: str) -> None:
        """Refuse at once a URL whose host spells out an address the egress guard refuses.

        Host names are checked when a delivery is sent (what they resolve to may change).
        """
        address = literal_address(urlsplit(url).hostname or "")
        if address is None:
            return
        reason = EgressAllowList.parse(self.settings.egress_allow).refusal(address)
        if reason is not None:
            raise InvalidInput(
                f"url: {address} is {reason}, which deliveries may not reach; "
                f"list it in {ALLOW_SETTING} to allow it",
                path="url",
            )

    async def create(self, data: WebhookCreate, actor: Actor) -> tuple[Webhook, str]:
        """A new webhook and its signing secret (the only time the secret is seen in clear)."""
        self._check_url(data.url)
        if data.secret_name is not None:
            await self._check_secret(data.secret_name)
        signing_secret = new_signing_secret()
        webhook = Webhook(
            name=data.name,
            description=data.description,
            url=data.url,
            signing_secret_ciphertext=self.keyring.encrypt(pack_signing_secrets([signing_secret])),
            secret_name=data.secret_name,
            events=pack_events(list(data.events)),
            enabled=data.enabled,
            created_by=actor.label,
        )
        self.session.add(webhook)
        try:
            await self.session.flush()
        except IntegrityError:
            raise AlreadyExists(f"webhook {data.name!r} already exists") from None
        return webhook, signing_secret

    async def update(self, webhook: Webhook, data: WebhookUpdate) -> tuple[Webhook, str | None]:
        """Change fields; with `rotate_secret`, a new signing secret (answered, once)."""
        given: dict[str, Any] = data.model_dump(exclude_unset=True)
        for field in ("url", "events", "enabled", "rotate_secret"):
            if field in given and given[field] is None:
                raise InvalidInput(f"{field}: can't be null", path=field)
        if "url" in given:
            self._check_url(given["url"])
            webhook.url = given["url"]
        if "secret_name" in given:
            if given["secret_name"] is not None:
                await self._check_secret(given["secret_name"])
            webhook.secret_name = given["secret_name"]
        if "description" in given:
            webhook.description = given["description"] or ""
        if "events" in given:
            webhook.events = pack_events(given["events"])
        if "enabled" in given:
            webhook.enabled = given["enabled"]
        signing_secret = None
        if given.get("rotate_secret"):
            # A PATCH rotation replaces the secret at once (say, after a leak).
            signing_secret = await self._rotate(webhook, grace_seconds=0)
        webhook.updated_at = utcnow()
        await self.session.flush()
        return webhook, signing_secret

    async def rotate_secret(self, webhook: Webhook, data: SecretRotation) -> tuple[Webhook, str]:
        """A new signing secret (answered, once); the current one keeps signing beside it for
        `grace_seconds`, and one replaced earlier stops at once."""
        signing_secret = await self._rotate(webhook, data.grace_seconds)
        webhook.updated_at = utcnow()
        await self.session.flush()
        return webhook, signing_secret

    async def _rotate(self, webhook: Webhook, grace_seconds: int) -> str:
        """Make and store a new signing secret; keep the current one for `grace_seconds`.

        Compare-and-set on the stored secrets: of two rotations at once, one answers 409 rather
        than a secret that would never sign.
        """
        signing_secret = new_signing_secret()
        kept = [signing_secret]
        expires_at = None
        if grace_seconds > 0:
            kept.append(self._signing_secrets(webhook)[0])
            expires_at = utcnow() + timedelta(seconds=grace_seconds)
        written = await self.session.execute(
            update(Webhook)
            .where(col(Webhook.id) == webhook.id)
            .where(col(Webhook.signing_secret_ciphertext) == webhook.signing_secret_ciphertext)
            .values(
                signing_secret_ciphertext=self.keyring.encrypt(pack_signing_secrets(kept)),
                previous_secret_expires_at=expires_at,
            )
            .execution_options(synchronize_session="fetch")
        )
        if written.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict(f"webhook {webhook.name!r} was changed meanwhile; try again")
        return signing_secret

    def _signing_secrets(self, webhook: Webhook) -> list[str]:
        """Every signing secret stored, newest first (expired or not)."""
        return self.keyring.decrypt(webhook.signing_secret_ciphertext).split(" ")

    async def delete(self, webhook: Webhook) -> None:
        """Delete a webhook (retries still pending for it stop)."""
        await self.session.delete(webhook)
        await self.session.flush()

    def target(self, webhook: Webhook) -> DeliveryTarget:
        """The webhook as a delivery needs it: its signing secrets still valid, decrypted."""
        assert webhook.id is not None
        current, *previous = self._signing_secrets(webhook)
        valid = [current]
        if previous and previous_secret_valid_until(webhook, utcnow()) is not None:
            valid.append(previous[0])
        return DeliveryTarget(
            webhook_id=webhook.id,
            name=webhook.name,
            url=webhook.url,
            signing_secrets=tuple(valid),
        )

    async def targets_for(self, secret: str, event_type: str) -> list[DeliveryTarget]:
        """The enabled webhooks that want `event_type` of `secret` (global ones and its own)."""
        query = (
            select(Webhook)
            .where(col(Webhook.enabled))
            .where(or_(col(Webhook.secret_name).is_(None), col(Webhook.secret_name) == secret))
            .order_by(col(Webhook.name))
        )
        webhooks = (await self.session.execute(query)).scalars().all()
        return [self.target(w) for w in webhooks if event_type in unpack_events(w.events)]

    async def enabled_target(self, webhook_id: int) -> DeliveryTarget | None:
        """The webhook as it is now, or None once it was deleted or disabled."""
        webhook = await self.session.get(Webhook, webhook_id)
        if webhook is None or not webhook.enabled:
            return None
        return self.target(webhook)

    async def note_delivery(
        self, webhook_id: int, status: str, error: str | None, at: datetime
    ) -> None:
        """Remember how the webhook's last delivery went (nothing, if it was deleted)."""
        await self.session.execute(
            update(Webhook)
            .where(col(Webhook.id) == webhook_id)
            .values(last_delivery_at=at, last_delivery_status=status, last_delivery_error=error)
        )

    @staticmethod
    def describe(webhook: Webhook) -> WebhookRead:
        """A webhook as the API shows it (never its signing secret)."""
        return WebhookRead(
            name=webhook.name,
            description=webhook.description,
            url=webhook.url,
            secret_name=webhook.secret_name,
            events=unpack_events(webhook.events),
            enabled=webhook.enabled,
            last_delivery_at=webhook.last_delivery_at,
            last_delivery_status=webhook.last_delivery_status,
            last_delivery_error=webhook.last_delivery_error,
            previous_secret_expires_at=previous_secret_valid_until(webhook, utcnow()),
            created_by=webhook.created_by,
            created_at=webhook.created_at,
            updated_at=webhook.updated_at,
        )

    @classmethod
    def describe_with_secret(
        cls, webhook: Webhook, signing_secret: str | None
    ) -> WebhookWithSecret:
        """A webhook with its new signing secret (the create answer, or a rotation's)."""
        return WebhookWithSecret(
            **cls.describe(webhook).model_dump(), signing_secret=signing_secret
        )
