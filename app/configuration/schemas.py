"""Request and response models of `POST /v1/apply` (the document itself: `document.py`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.configuration.document import ENV_NAME_PATTERN, Kind
from app.configuration.plan import ChangeAction, Plan

DOCUMENT_EXAMPLE = """version: 1
roles:
  - name: github-refresher
    permissions: [services.run:refreshers, secrets.update_from_service:GITHUB_TOKEN]
service_accounts:
  - name: github-refresher
    roles: [github-refresher]
secrets:
  - name: GITHUB_CLIENT_SECRET
    environment_specific: false
    value_from: {env: GITHUB_CLIENT_SECRET}
"""


class ApplyRequest(BaseModel):
    """The JSON form: the YAML document, and the values its `value_from: {env: NAME}` name."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"document": DOCUMENT_EXAMPLE, "env": {"GITHUB_CLIENT_SECRET": "s3cr3t"}}]
        },
    )

    document: str = Field(max_length=1024 * 1024, description="The configuration document (YAML).")
    env: dict[Annotated[str, Field(pattern=ENV_NAME_PATTERN)], str] = Field(
        default_factory=dict,
        description="What `value_from: {env: NAME}` reads on the API (never the server's own "
        "environment).",
    )


class ChangeRead(BaseModel):
    """One object of the plan: what happens to it and which fields change (never values)."""

    kind: Kind
    name: str
    action: ChangeAction
    fields: list[str] = Field(description="Changed fields (`value` when the value changes).")


class PlanSummary(BaseModel):
    """How many objects get each action."""

    create: int
    update: int
    delete: int
    unchanged: int


class ApplyResult(BaseModel):
    """The plan, and whether it was carried out."""

    applied: bool = Field(description="Changes were written (false for a dry run or no change).")
    dry_run: bool
    prune: bool
    summary: PlanSummary
    changes: list[ChangeRead] = Field(description="Every declared or pruned object, in order.")
    warnings: list[str]

    @classmethod
    def of(cls, plan: Plan, *, dry_run: bool) -> ApplyResult:
        """The answer for a plan."""
        return cls(
            applied=plan.changed and not dry_run,
            dry_run=dry_run,
            prune=plan.prune,
            summary=PlanSummary(
                create=plan.count("create"),
                update=plan.count("update"),
                delete=plan.count("delete"),
                unchanged=plan.count("unchanged"),
            ),
            changes=[
                ChangeRead(kind=c.kind, name=c.name, action=c.action, fields=c.fields)
                for c in plan.changes
            ],
            warnings=plan.warnings,
        )
