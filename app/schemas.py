"""Pieces every domain's models share: the strict request model, the error body, and an aware
moment that fits in UTC."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from app.pipeline.schemas import NODE_TYPES

# Pydantic puts the tag of a discriminated union into an error's location; readers don't want it.
UNION_TAGS = {*NODE_TYPES, "comparison", "all", "any", "not", "basic", "bearer"}


def all_finite(value: Any) -> bool:
    """Whether every number in a JSON value is finite (Python's parser lets NaN and 1e999 in)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(item) for item in value.values())
    if isinstance(value, list):
        return all(all_finite(item) for item in value)
    return True


def _fits_in_utc(value: datetime) -> datetime:
    """The moment in UTC; one whose offset pushes it past year 1 or 9999 can't be stored."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            "the moment falls outside years 1-9999 once converted to UTC; give a nearer one"
        ) from None


def _not_null(schema: dict[str, Any]) -> None:
    """Drop the null branch (and the null default) from a field's JSON schema."""
    schema.pop("default", None)
    branches = [branch for branch in schema.pop("anyOf", []) if branch != {"type": "null"}]
    if len(branches) == 1:
        schema.update(branches[0])
    elif branches:
        schema["anyOf"] = branches


def left_out(**constraints: Any) -> Any:
    """An update's field that may be left out (it stays as it is) but not set to null.

    Typed `X | None` for Python (validation and its messages stay those of `X`; the store
    refuses an explicit null with a 422 naming the field), declared `X` in the schema, so the
    schema never offers a null the API refuses.
    """
    return Field(None, json_schema_extra=_not_null, **constraints)


# An aware moment that fits in UTC (`9999-12-31T23:59:59-23:59` does not), answered in UTC.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_fits_in_utc)]


class StrictModel(BaseModel):
    """Unknown fields are refused, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


class InputProblem(BaseModel):
    """One thing wrong with the input: where, and what to fix."""

    path: str = Field(examples=["endpoints[0].action[2].then[0]"])
    message: str = Field(examples=["unknown node type 'teleport'"])


class ErrorDetail(BaseModel):
    """What went wrong: a stable `type`, a message for people, and details by type."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["not_found"])
    message: str = Field(examples=["secret 'ACCESS_TOKEN' does not exist"])
    errors: list[InputProblem] | None = Field(
        None,
        description="Every problem of a `validation_error` (absent otherwise).",
        exclude_if=lambda errors: errors is None,
    )


class ErrorResponse(BaseModel):
    """The body of every error response (a failed run adds its `run_id` and `status`)."""

    model_config = ConfigDict(extra="allow")

    error: ErrorDetail


def format_location(loc: tuple[Any, ...]) -> str:
    """`("body", "endpoints", 0, "action", 2, "if", "then", 0)` -> `endpoints[0].action[2].then[0]`.

    The tags pydantic adds for discriminated unions (`"if"` above) are left out.
    """
    parts: list[str] = []
    expect_tag = False
    for item in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if expect_tag and isinstance(item, str) and item in UNION_TAGS:
            expect_tag = False
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else str(item))
        expect_tag = isinstance(item, int) or item in ("condition", "not", "auth")
    return "".join(parts)


def describe_error(error: dict[str, Any]) -> str:
    """A validation error as a sentence that says what to fix."""
    ctx = error.get("ctx") or {}
    if error["type"] == "union_tag_invalid":
        return f"unknown node type {ctx.get('tag')!r} (known: {', '.join(NODE_TYPES)})"
    if error["type"] == "union_tag_not_found":
        return f"every node needs a 'type' (one of: {', '.join(NODE_TYPES)})"
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "json_invalid":
        return f"the request body is not valid JSON ({ctx.get('error', 'decode error')})"
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")
