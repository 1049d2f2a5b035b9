"""Request and response models of the services API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.pipeline.schemas import CANONICAL_ACTION_EXAMPLE, VARIABLE_NAME_PATTERN, Node
from app.text import Description, DisplayName

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
READABLE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
VariableType = Literal["string", "number", "integer", "boolean", "object", "array", "any"]
RunMethod = Literal["GET", "POST", "PUT"]

_TYPE_CHECKS: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "any": lambda v: True,
}


SERVICE_EXAMPLE: dict[str, Any] = {
    "slug": "oauth",
    "name": "OAuth provider",
    "variables": [{"name": "token", "type": "string", "default": None}],
    "endpoints": [
        {
            "readable_id": "refresh-token",
            "name": "Refresh the access token",
            "methods": ["GET", "POST"],
            "enable_log": True,
            "action": CANONICAL_ACTION_EXAMPLE,
        }
    ],
}


class ServiceVariable(BaseModel):
    """A service variable: every run starts with it set to its default."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=VARIABLE_NAME_PATTERN, examples=["token"])
    type: VariableType = "any"
    default: Any = None

    @model_validator(mode="after")
    def _default_fits(self) -> ServiceVariable:
        if self.default is not None and not _TYPE_CHECKS[self.type](self.default):
            raise ValueError(f"the default of variable {self.name!r} is not of type {self.type!r}")
        return self


class EndpointIn(BaseModel):
    """An endpoint as written by its author."""

    model_config = ConfigDict(extra="forbid")

    readable_id: str = Field(pattern=READABLE_ID_PATTERN, examples=["refresh-token"])
    name: DisplayName = Field(examples=["Refresh the access token"])
    description: Description = ""
    methods: list[RunMethod] = Field(["GET", "POST"], min_length=1)
    enable_log: bool = Field(
        False, description="Record successful runs too (failed runs always are)."
    )
    action: list[Node] = Field(min_length=1, examples=[CANONICAL_ACTION_EXAMPLE])


class EndpointRead(BaseModel):
    """An endpoint as stored."""

    readable_id: str
    name: str
    description: str
    methods: list[str]
    enable_log: bool
    action: list[dict[str, Any]]


class ServiceBody(BaseModel):
    """Everything about a service but its slug (the body of `PUT /v1/services/{slug}`)."""

    model_config = ConfigDict(extra="forbid")

    name: DisplayName = Field(examples=["OAuth provider"])
    description: Description = ""
    variables: list[ServiceVariable] = Field(default_factory=list)
    endpoints: list[EndpointIn] = Field(default_factory=list)

    @field_validator("variables")
    @classmethod
    def _unique_variables(cls, variables: list[ServiceVariable]) -> list[ServiceVariable]:
        _refuse_duplicates("variable name", [v.name for v in variables])
        return variables

    @field_validator("endpoints")
    @classmethod
    def _unique_endpoints(cls, endpoints: list[EndpointIn]) -> list[EndpointIn]:
        _refuse_duplicates("endpoint readable_id", [e.readable_id for e in endpoints])
        return endpoints


def _refuse_duplicates(label: str, names: list[str]) -> None:
    """A field validator's check (so the error points at the list) that names are unique."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate {label}: {', '.join(duplicates)}")


class ServiceCreate(ServiceBody):
    """A new service with its endpoints."""

    slug: str = Field(pattern=SLUG_PATTERN, examples=["oauth"])

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SERVICE_EXAMPLE]})


class ServiceRead(BaseModel):
    """A service with its endpoints."""

    slug: str
    name: str
    description: str
    variables: list[ServiceVariable]
    endpoints: list[EndpointRead]
    created_at: datetime
    updated_at: datetime
