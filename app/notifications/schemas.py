"""Request and response models of webhooks, and the payloads they deliver."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.pipeline.schemas import SECRET_NAME_PATTERN
from app.schemas import StrictModel, left_out
from app.text import Description

WEBHOOK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MAX_URL_LENGTH = 2000
EventType = Literal["secret.failing", "secret.needs_reauth", "secret.recovered", "secret.connected"]
EVENT_TYPES: tuple[EventType, ...] = (
    "secret.failing",
    "secret.needs_reauth",
    "secret.recovered",
    "secret.connected",
)


def check_webhook_url(url: str) -> str:
    """An absolute http(s) URL with a host, no credentials and nothing that can't be sent."""
    if any(ord(char) < 33 or ord(char) == 127 for char in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # parsing it is the check
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"must be an absolute http:// or https:// URL, got scheme {parts.scheme or 'none'!r}"
        )
    if not parts.hostname:
        raise ValueError("must name a host (http(s)://host/path)")
    if parts.username is not None or parts.password is not None:
        # A URL is shown to whoever manages webhooks; a credential in it would be a leak.
        raise ValueError(
            "must not carry credentials (user:password@); the signature authenticates tokenfarm"
        )
    return url


WebhookName = Annotated[str, Field(pattern=WEBHOOK_NAME_PATTERN, examples=["ops-alerts"])]
WebhookUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="Where deliveries are POSTed (http or https; the egress guard applies).",
        examples=["https://hooks.example.com/tokenfarm"],
    ),
    AfterValidator(check_webhook_url),
]
SecretName = Annotated[
    str | None,
    Field(
        pattern=SECRET_NAME_PATTERN,
        description="Only this secret's events (it must exist); null: every secret's.",
        examples=["ACCESS_TOKEN"],
    ),
]
Events = Annotated[
    list[EventType],
    Field(min_length=1, description="The event types to deliver.", examples=[list(EVENT_TYPES)]),
]


class WebhookCreate(StrictModel):
    """A new webhook; its signing secret is generated and shown once, in the answer."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "ops-alerts",
                    "url": "https://hooks.example.com/tokenfarm",
                    "events": ["secret.failing", "secret.needs_reauth", "secret.recovered"],
                }
            ]
        },
    )

    name: WebhookName
    description: Description = ""
    url: WebhookUrl
    secret_name: SecretName = None
    events: Events = Field(default_factory=lambda: list(EVENT_TYPES))
    enabled: bool = True


class WebhookUpdate(StrictModel):
    """Fields to change (absent ones stay); `rotate_secret` makes a new signing secret."""

    description: Description | None = None
    url: WebhookUrl | None = left_out()
    secret_name: SecretName = Field(
        None, description="A secret's name, or null to deliver every secret's events."
    )
    events: Events | None = left_out()
    enabled: bool | None = left_out()
    rotate_secret: bool = Field(
        False,
        description="Replace the signing secret at once (no grace period: see `rotate-secret`); "
        "the answer shows the new one, once.",
    )


DEFAULT_GRACE_SECONDS = 86400
MAX_GRACE_SECONDS = 7 * 86400


class SecretRotation(StrictModel):
    """How a rotation goes: the replaced secret keeps signing beside the new one for a while."""

    grace_seconds: int = Field(
        DEFAULT_GRACE_SECONDS,
        ge=0,
        le=MAX_GRACE_SECONDS,
        description="How long deliveries stay signed with the replaced secret too (0: stop at "
        "once, say after a leak); at most 7 days.",
        examples=[DEFAULT_GRACE_SECONDS],
    )


class WebhookRead(BaseModel):
    """A webhook, without its signing secret, and how its last delivery went."""

    name: str
    description: str
    url: str
    secret_name: str | None
    events: list[str]
    enabled: bool
    last_delivery_at: datetime | None
    last_delivery_status: str | None = Field(description="`delivered` or `failed`.")
    last_delivery_error: str | None = Field(
        description="Why the last delivery failed (its last attempt), or null."
    )
    previous_secret_expires_at: datetime | None = Field(
        description="Until when deliveries are signed with the secret a rotation replaced too, "
        "or null."
    )
    created_by: str
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookRead):
    """A webhook with its signing secret, shown this once (on create, or a rotation)."""

    signing_secret: str | None = Field(
        description="`whsec_…`: verifies the `webhook-signature` of deliveries (Standard "
        "Webhooks); never shown again (null when a change did not rotate it)."
    )


class PingResult(BaseModel):
    """What one `ping` delivery (no retries) came back with."""

    delivery_id: str
    delivered: bool
    status_code: int | None = Field(description="The receiver's HTTP status, if it answered.")
    error: str | None = Field(description="Why the delivery failed, or null.")
