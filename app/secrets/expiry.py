"""When a value should be refreshed on its own: the lead before expiry, the plan, the backoff.

Pure functions of a secret, a value's timing and the current time; the store writes their result
to `secret_value.next_refresh_at`, and the scheduler claims values whose time has come.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from app.backoff import backoff_seconds

LEAD_SHARE = 0.1
"""Default lead: this share of a value's lifetime (from when it was written to when it expires)."""
MIN_LEAD_SECONDS = 30.0
"""The default lead is never shorter than this."""
MAX_JITTER_SECONDS = 30.0
"""Jitter spreads refreshes of values that expire together: up to 10 % of the lead, at most this."""
BACKOFF_BASE_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 3600.0
BACKOFF_JITTER_SHARE = 0.1


class Timed(Protocol):
    """What planning needs of a value (a `SecretValue` row is one): when it was written and when
    it expires."""

    @property
    def expires_at(self) -> datetime | None: ...

    @property
    def updated_at(self) -> datetime: ...


class Plannable(Protocol):
    """What planning needs of a secret (a `Secret`, or a row of its table, is one)."""

    @property
    def refresh_endpoint(self) -> str | None: ...

    @property
    def refresh_as(self) -> str | None: ...

    @property
    def environment_specific(self) -> bool: ...

    @property
    def locked(self) -> bool: ...

    @property
    def status(self) -> str: ...

    @property
    def refresh_before_expiry_seconds(self) -> int | None: ...


@dataclass(frozen=True)
class ValueTiming:
    """A value's timing as a write leaves it, for planning before the row is updated."""

    expires_at: datetime | None
    updated_at: datetime


def refresh_lead_seconds(secret: Plannable, value: Timed) -> float:
    """How long before expiry to refresh: the secret's own setting, else 10 % of the lifetime
    (at least 30 s, but never more than half the lifetime).

    Without that cap a token living 20 s would be due again the moment it was refreshed, and the
    scheduler would refresh it without pause.
    """
    if secret.refresh_before_expiry_seconds is not None:
        return float(secret.refresh_before_expiry_seconds)
    if value.expires_at is None:
        return MIN_LEAD_SECONDS
    lifetime = (value.expires_at - value.updated_at).total_seconds()
    return min(max(MIN_LEAD_SECONDS, lifetime * LEAD_SHARE), max(lifetime / 2, 0.0))


def refreshes_on_its_own(secret: Plannable) -> bool:
    """Whether the scheduler may refresh this secret: bound to an endpoint and an account, and a
    kind of secret a run can write (environment-specific, not locked) that isn't `needs_reauth`."""
    return bool(
        secret.refresh_endpoint
        and secret.refresh_as
        and secret.environment_specific
        and not secret.locked
        and secret.status != "needs_reauth"
    )


def plan_next_refresh(
    secret: Plannable, value: Timed, now: datetime, *, rng: random.Random | None = None
) -> datetime | None:
    """When the scheduler should refresh `value` (None: never on its own), never before `now`."""
    if value.expires_at is None or not refreshes_on_its_own(secret):
        return None
    lead = refresh_lead_seconds(secret, value)
    # Not a secret: jitter only spreads load, so the default generator is fine.
    jitter = (rng or random).uniform(0.0, min(lead * LEAD_SHARE, MAX_JITTER_SECONDS))
    planned = value.expires_at - timedelta(seconds=lead + jitter)
    return max(planned, now)


def backoff_after_failure(
    failure_count: int, now: datetime, *, rng: random.Random | None = None
) -> datetime:
    """When to try again after `failure_count` failed refreshes in a row: 30 s, doubling, at most
    an hour, plus up to 10 % jitter."""
    delay = backoff_seconds(
        failure_count,
        base_seconds=BACKOFF_BASE_SECONDS,
        max_seconds=BACKOFF_MAX_SECONDS,
        fixed_share=1.0,
        random_share=BACKOFF_JITTER_SHARE,
        rng=rng,
    )
    return now + timedelta(seconds=delay)
