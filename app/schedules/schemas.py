"""Request and response models of schedules."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.auth.schemas import ACCOUNT_NAME_PATTERN
from app.config import Environment
from app.schedules.cron import MAX_CRON_LENGTH
from app.schemas import StrictModel, left_out
from app.services.schemas import READABLE_ID_PATTERN, SLUG_PATTERN
from app.text import Description

SCHEDULE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ScheduleName = Annotated[str, Field(pattern=SCHEDULE_NAME_PATTERN, examples=["hourly-github"])]
Cron = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_CRON_LENGTH,
        description="Five fields: minute hour day-of-month month day-of-week (0 = Sunday).",
        examples=["*/15 * * * *"],
    ),
]
TimeZone = Annotated[
    str, Field(min_length=1, max_length=64, description="An IANA time zone.", examples=["UTC"])
]
Environments = Annotated[
    list[Environment] | None,
    Field(
        min_length=1,
        description="Run only where TOKENFARM_ENVIRONMENT is one of these (null: everywhere).",
    ),
]


class ScheduleCreate(StrictModel):
    """A new schedule: run `service`/`endpoint` on `cron` in `timezone` as `run_as`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "hourly-refresh",
                    "service": "oauth",
                    "endpoint": "refresh-token",
                    "cron": "0 * * * *",
                    "timezone": "UTC",
                    "run_as": "scheduler",
                }
            ]
        },
    )

    name: ScheduleName
    description: Description = ""
    service: str = Field(pattern=SLUG_PATTERN, examples=["oauth"])
    endpoint: str = Field(pattern=READABLE_ID_PATTERN, examples=["refresh-token"])
    cron: Cron
    timezone: TimeZone = "UTC"
    run_as: str = Field(
        pattern=ACCOUNT_NAME_PATTERN,
        description="The service account the runs act as (creating needs act_as:ACCOUNT).",
        examples=["scheduler"],
    )
    enabled: bool = True
    environments: Environments = None


class ScheduleUpdate(StrictModel):
    """Fields to change; absent ones stay as they are."""

    description: Description | None = None
    service: str | None = left_out(pattern=SLUG_PATTERN)
    endpoint: str | None = left_out(pattern=READABLE_ID_PATTERN)
    cron: Cron | None = left_out()
    timezone: TimeZone | None = left_out()
    run_as: str | None = left_out(pattern=ACCOUNT_NAME_PATTERN)
    enabled: bool | None = left_out()
    environments: Environments = None


class ScheduleRead(BaseModel):
    """A schedule and its state."""

    name: str
    description: str
    service: str
    endpoint: str
    cron: str
    timezone: str
    run_as: str
    enabled: bool
    environments: list[str] | None
    next_run_at: datetime | None = Field(description="The next tick (null while disabled).")
    last_run_at: datetime | None
    last_status: str | None = Field(
        description="`succeeded`, `failed` or `interrupted` (its replica stopped mid-run)."
    )
    last_run_id: str | None
    running: bool = Field(description="A replica has claimed the current tick.")
    created_by: str
    created_at: datetime
    updated_at: datetime
