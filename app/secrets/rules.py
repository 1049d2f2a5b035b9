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
