"""`update_secret`: writes a secret when the run succeeds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from app.errors import BindingError
from app.pipeline.conditions import has_value
from app.pipeline.context import PendingWrite
from app.pipeline.nodes.base import SECRET_NAME_PATTERN, Flow, NodeBase

if TYPE_CHECKING:
    from app.pipeline.context import RunContext


class UpdateSecretNode(NodeBase):
    """Writes a secret (at the end of a successful run, compare-and-set on its version)."""

    type: Literal["update_secret"]
    secret: str = Field(pattern=SECRET_NAME_PATTERN)
    value: Any
    expires_in: Any = Field(None, description="Seconds from now, or a binding to them.")
    expires_at: Any = Field(None, description="An ISO 8601 time or epoch seconds.")
    allow_empty: bool = False

    @model_validator(mode="after")
    def _one_expiry(self) -> UpdateSecretNode:
        if self.expires_in is not None and self.expires_at is not None:
            raise ValueError("give 'expires_in' or 'expires_at', not both")
        return self

    def secrets_written(self) -> Sequence[tuple[str, str]]:
        """The secret it writes."""
        return [("secret", self.secret)]

    def flows(self) -> Sequence[Flow]:
        """The value is stored in the secret; the expiry shows in its metadata, which
        `secrets.read` doesn't guard."""
        return [
            Flow("secret", ".value", self.value, self.secret),
            Flow("output", ".expires_in", self.expires_in),
            Flow("output", ".expires_at", self.expires_at),
        ]

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        """Queue the write; the runner commits every write together when the run succeeds."""
        entry["secret"] = self.secret
        value = ctx.render(self.value)
        if value is None:
            # A secret never holds null, not even with allow_empty: the store would refuse it
            # only after every other node had run.
            raise BindingError(
                f"update_secret {self.secret}: the value is null, so the stored one is kept"
            )
        if not self.allow_empty and not has_value(value):
            raise BindingError(
                f"update_secret {self.secret}: the value is empty, so the stored one is kept "
                "(set allow_empty: true to write empty values)"
            )
        expires_at = parse_expiry(
            ctx.render(self.expires_in), ctx.render(self.expires_at), ctx.clock()
        )
        ctx.redactor.add(value)
        ctx.secrets[self.secret] = value
        ctx.writes[self.secret] = PendingWrite(self.secret, value, expires_at)
        if expires_at is not None:
            entry["expires_at"] = expires_at.isoformat()


def _as_seconds(value: Any, field: str) -> float:
    if isinstance(value, bool) or value is None:
        raise BindingError(f"'{field}' must be a number of seconds")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BindingError(f"'{field}' must be a number of seconds") from None


def _from_epoch(seconds: float, field: str) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        # Out of range or NaN: an upstream answered nonsense, so the run fails cleanly.
        raise BindingError(f"'{field}' is out of range for a point in time") from None


def parse_expiry(expires_in: Any, expires_at: Any, now: float) -> datetime | None:
    """The absolute expiry (UTC) from `expires_in` seconds or `expires_at` (ISO 8601 or epoch)."""
    if expires_in is not None:
        return _from_epoch(now + _as_seconds(expires_in, "expires_in"), "expires_in")
    if expires_at is None:
        return None
    if isinstance(expires_at, str) and not expires_at.replace(".", "", 1).isdigit():
        try:
            parsed = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except (ValueError, OverflowError):
            raise BindingError("'expires_at' must be an ISO 8601 time or epoch seconds") from None
    return _from_epoch(_as_seconds(expires_at, "expires_at"), "expires_at")
