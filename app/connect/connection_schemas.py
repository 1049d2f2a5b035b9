"""Request and response models of the device grant and disconnect routes (no token, no code)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class DeviceAuthorizationStarted(BaseModel):
    """What the person needs (RFC 8628 §3.2: the user code and where to enter it); tokenfarm
    keeps the device code and polls the provider itself."""

    id: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None = None
    expires_in: int
    interval: int
    status_url: str


class DeviceAuthorizationStatus(BaseModel):
    """How a device grant started by this server is going."""

    id: str
    secret: str
    status: Literal["pending", "connected", "denied", "expired", "failed"]
    message: str | None = None


class RevocationRead(BaseModel):
    """What the provider's revocation endpoint did (RFC 7009)."""

    attempted: bool
    revoked: bool
    message: str | None = None


class DisconnectedRead(BaseModel):
    """A disconnect: the tokens are cleared whatever the provider said."""

    secret: str
    disconnected: bool = True
    revocation: RevocationRead
