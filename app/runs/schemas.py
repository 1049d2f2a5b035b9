"""Response models of runs and of the run log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class RunResult(BaseModel):
    """The answer of running an endpoint."""

    run_id: str
    status: Literal["succeeded", "failed"]
    error: dict[str, Any] | None = Field(None, description="`{type, message, ...}` when failed.")
    response: Any = Field(None, description="What `end_execution` returned (secret values redacted).")


class RefreshResult(RunResult):
    """The answer of `GET /refresh/{secret}`: the run plus the secret's state afterwards."""

    secret: str
    version: int | None
    expires_at: datetime | None


class RunSummary(BaseModel):
    """One entry of the run log."""

    id: str
    service: str
    endpoint: str
    trigger: str
    actor: str
    status: str
    http_status: int
    error_type: str | None
    error_message: str | None
    secrets: list[str]
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float


class RunDetail(RunSummary):
    """A run with its redacted per-node trace."""

    trace: list[dict[str, Any]]
