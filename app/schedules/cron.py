"""Cron expressions (five fields, 0 = Sunday) evaluated in an IANA time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from app.errors import InvalidInput

MAX_CRON_LENGTH = 200


def zone(name: str) -> ZoneInfo:
    """The time zone `name` (e.g. `Europe/Berlin`), or a 422 saying it is unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"timezone: unknown time zone {name!r}; use an IANA name such as 'UTC' or "
            "'Europe/Berlin'",
            field="timezone",
        ) from None


def check_cron(expression: str) -> None:
    """Refuse anything but a valid five-field cron expression, saying what is wrong."""
    fields = expression.split()
    if len(fields) != 5:
        raise InvalidInput(
            f"cron: {expression!r} has {len(fields)} fields; a cron expression has five: "
            "minute hour day-of-month month day-of-week (0 = Sunday), e.g. '*/15 * * * *'",
            field="cron",
        )
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise InvalidInput(f"cron: {expression!r} is not valid: {exc}", field="cron") from None


def next_fire(expression: str, timezone: str, after: datetime) -> datetime:
    """The first time strictly after `after` that the expression matches, in UTC.

    Evaluated in the schedule's time zone, so `0 9 * * 1` is 09:00 local time on Mondays across
    daylight-saving changes.
    """
    local = after.astimezone(zone(timezone)).replace(microsecond=0)
    fire = next(iter(CronSim(expression, local)))
    return fire.astimezone(UTC)
