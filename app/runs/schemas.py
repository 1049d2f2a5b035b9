"""Response models of runs and of the run log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas import ErrorDetail

RunResultStatus = Literal["succeeded", "failed"]
# `storing`: the upstream answered and the writes are being stored (a run that stays so died
# meanwhile, and can be recovered); `recovered`: its kept answer was written afterwards.
RunStatus = Literal["succeeded", "failed", "storing", "recovered"]
# `schedule`: a cron schedule's tick; `expiry`: the scheduler refreshing a secret before it expires.
RunTrigger = Literal["api", "refresh", "read", "schedule", "expiry", "connect"]


RUN_ID_EXAMPLE = "0b5c7a9e-3f1d-4c2a-9e8b-6d4f2a1c7e90"
# Run ids are UUIDs; anything else can't be in the log (and must not reach the database raw).
RUN_ID_PATTERN = r"^[A-Za-z0-9-]{1,64}$"


class RunResult(BaseModel):
    """The answer of running an endpoint."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"run_id": RUN_ID_EXAMPLE, "status": "succeeded", "error": None, "response": None},
                {
                    "run_id": RUN_ID_EXAMPLE,
                    "status": "failed",
                    "error": {
                        "type": "upstream_error",
                        "message": "POST auth.example.com/oauth/token answered 400: invalid_grant",
                        "upstream_status": 400,
                    },
                    "response": None,
                },
            ]
        }
    )

    run_id: str
    status: RunResultStatus
    error: ErrorDetail | None = Field(None, description="Why the run failed (null when it didn't).")
    response: Any = Field(
        None, description="What `end_execution` returned (secret values redacted)."
    )
    coalesced: bool = Field(
        False, description="This call shared a run that a concurrent caller started."
    )
    adopted: bool = Field(
        False,
        description="Nothing was called: another run (on another replica) had just refreshed "
        "the targets while this one waited; `run_id` is that run.",
    )


class RefreshResult(RunResult):
    """The answer of `GET /refresh/{secret}`: the run plus the secret's state afterwards."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "run_id": RUN_ID_EXAMPLE,
                    "status": "succeeded",
                    "error": None,
                    "response": None,
                    "secret": "ACCESS_TOKEN",
                    "version": 7,
                    "expires_at": "2030-01-01T12:00:00Z",
                }
            ]
        }
    )

    secret: str = Field(examples=["ACCESS_TOKEN"])
    version: int | None = Field(description="The secret's current version (null: no value yet).")
    expires_at: datetime | None


class RunSummary(BaseModel):
    """One entry of the run log."""

    id: str
    service: str
    endpoint: str
    trigger: RunTrigger
    schedule: str | None = Field(None, description="The schedule whose tick it was.")
    actor: str
    status: RunStatus
    http_status: int
    error_type: str | None
    error_class: str | None = Field(
        None, description="`permanent`, `transient` or `rate_limited` for failed refreshes."
    )
    error_message: str | None
    recoverable: bool = Field(
        False,
        description="The upstream answered but the writes were not stored: POST "
        "/v1/runs/{id}/recover (or `tokenfarm runs recover ID`) writes them.",
    )
    secrets: list[str] = Field(description="The secrets the run's `update_secret` nodes target.")
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float


class TraceEntry(BaseModel):
    """One node of a run: where it is, what it did, how it ended (never a secret value)."""

    model_config = ConfigDict(extra="allow")

    path: str = Field(examples=["action[1]"])
    type: str = Field(examples=["web_request"])
    outcome: Literal["ok", "failed", "ended"] | None = Field(
        None, description="Null when the run stopped before the node finished."
    )
    duration_ms: float | None = None


class RunDetail(RunSummary):
    """A run with its redacted per-node trace."""

    trace: list[TraceEntry]


class RecoveredSecret(BaseModel):
    """A secret written by a recovery."""

    secret: str
    version: int


class RecoveryResult(BaseModel):
    """The answer of recovering a run."""

    run_id: str
    status: Literal["recovered"]
    written: list[RecoveredSecret]
