"""Which secrets a run may write: the one rule the runner's pre-flight, its failure marking, the
preset binder and config-as-code planning all apply."""

from __future__ import annotations

from enum import StrEnum


class Unwritable(StrEnum):
    """Why no run may write a secret, worded to follow "secret NAME …"."""

    LOCKED = "is locked"
    NOT_ENVIRONMENT_SPECIFIC = "is not environment-specific"


def why_runs_cannot_write(*, environment_specific: bool, locked: bool) -> Unwritable | None:
    """Why a run may not write a secret with these settings, or None: runs write only unlocked,
    environment-specific secrets (a locked one is kept as it is; one value for all environments
    is never a single environment's refresh to change)."""
    if locked:
        return Unwritable.LOCKED
    if not environment_specific:
        return Unwritable.NOT_ENVIRONMENT_SPECIFIC
    return None


COMPANION_SUFFIX = "__refresh_token"
"""A connected secret NAME keeps its refresh token in the hidden companion `NAME__refresh_token`."""


def companion_name(name: str) -> str:
    """The name of the hidden companion that holds the refresh token of connected secret `name`."""
    return f"{name}{COMPANION_SUFFIX}"


def may_be_companion(name: str) -> bool:
    """Whether `name` could be a companion's (a cheap test before the row is looked at)."""
    return name.endswith(COMPANION_SUFFIX)


class CompanionUse(StrEnum):
    """What a route would do with a hidden companion, worded to follow "can't …"."""

    READ = "be read"
    SET = "be set by hand"
    CHANGE = "be changed"
    DELETE = "be deleted"
    ROLL_BACK = "be rolled back"
    SHOW = "be shown"
    BIND = "get a refresher"


def companion_problem(name: str, companion_of: int | None, use: CompanionUse) -> str | None:
    """Why no route may do `use` with the secret `name`, or None: a hidden companion (the
    refresh token of a connected secret) is kept by tokenfarm alone; only the connect flow and
    the connected secret's own refresher (a run) write it, and nothing returns it."""
    if companion_of is None:
        return None
    owner = name.removesuffix(COMPANION_SUFFIX)
    return (
        f"secret {name!r} holds the refresh token of the connected secret {owner!r} and can't "
        f"{use}; connect {owner!r} again (POST /v1/secrets/{owner}/connect-links) or disconnect "
        f"it (DELETE /v1/secrets/{owner}/connection)"
    )
