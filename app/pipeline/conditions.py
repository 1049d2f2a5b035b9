"""The condition language: comparisons and all/any/not groups, their models and evaluation.

Values compare as JSON values: `true` is not `1`, `"1"` is not `1`. Errors name the operand types
only, never the values, because an operand may be a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from app.errors import BindingError
from app.pipeline.nodes.base import Strict

ComparisonOp = Literal[
    "has_value", "equals", "not_equals", "lt", "lte", "gt", "gte", "in", "not_in"
]


class Comparison(Strict):
    """`{"op", "left", "right"}`; `has_value` takes only `left`."""

    op: ComparisonOp
    left: Any = None
    right: Any = None

    @model_validator(mode="after")
    def _operands(self) -> Comparison:
        # Operands may be null on purpose, so "given" means present in the input.
        if "left" not in self.model_fields_set:
            raise ValueError(f"'{self.op}' needs 'left'")
        if self.op == "has_value" and "right" in self.model_fields_set:
            raise ValueError("'has_value' takes only 'left'")
        if self.op != "has_value" and "right" not in self.model_fields_set:
            raise ValueError(f"'{self.op}' needs 'right'")
        return self


class AllOf(Strict):
    """True when every condition is."""

    all: list[Condition] = Field(min_length=1)


class AnyOf(Strict):
    """True when at least one condition is."""

    any: list[Condition] = Field(min_length=1)


class NotOf(Strict):
    """True when the condition is false."""

    not_: Condition = Field(alias="not")


def _condition_tag(value: Any) -> str | None:
    """Which condition model a raw dict is, by the key it carries."""
    if isinstance(value, BaseModel):
        return {Comparison: "comparison", AllOf: "all", AnyOf: "any", NotOf: "not"}.get(type(value))
    if isinstance(value, dict):
        for key in ("op", "all", "any", "not"):
            if key in value:
                return "comparison" if key == "op" else key
    return None


Condition = Annotated[
    Annotated[Comparison, Tag("comparison")]
    | Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[NotOf, Tag("not")],
    Discriminator(
        _condition_tag,
        custom_error_type="invalid_condition",
        custom_error_message='a condition is {"op", "left", "right"}, {"all": [...]}, '
        '{"any": [...]} or {"not": {...}}',
    ),
]

for _model in (AllOf, AnyOf, NotOf):
    _model.model_rebuild()


def has_value(value: Any) -> bool:
    """Not null, not an empty string, list or object."""
    if value is None:
        return False
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True


def type_name(value: Any) -> str:
    """The JSON type of a value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def json_equal(left: Any, right: Any) -> bool:
    """Equality of JSON values (Python would call `True == 1` and `[1] == [True]` equal)."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(
            json_equal(a, b) for a, b in zip(left, right, strict=True)
        )
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    return type_name(left) == type_name(right) and bool(left == right)


def _ordered(op: str, left: Any, right: Any) -> bool:
    if not (_is_number(left) and _is_number(right)) and not (
        isinstance(left, str) and isinstance(right, str)
    ):
        raise BindingError(
            f"'{op}' compares two numbers or two strings, "
            f"got {type_name(left)} and {type_name(right)}"
        )
    if op == "lt":
        return bool(left < right)
    if op == "lte":
        return bool(left <= right)
    if op == "gt":
        return bool(left > right)
    return bool(left >= right)


def _contains(op: str, left: Any, right: Any) -> bool:
    """`in` / `not_in`: an item of an array, a key of an object, or a substring of a string."""
    if isinstance(right, list):
        found = any(json_equal(left, item) for item in right)
    elif isinstance(right, dict) and isinstance(left, str):
        found = left in right
    elif isinstance(right, str) and isinstance(left, str):
        found = left in right
    elif isinstance(right, (dict, str)):
        where = "an object's keys" if isinstance(right, dict) else "a string"
        raise BindingError(f"'{op}' looks for a string in {where}, got {type_name(left)}")
    else:
        raise BindingError(
            f"'{op}' needs an array, an object or a string on the right, got {type_name(right)}"
        )
    return found if op == "in" else not found


def evaluate(condition: Any, render: Callable[[Any], Any]) -> bool:
    """Whether a condition holds; `render` resolves the bindings in its operands."""
    if isinstance(condition, AllOf):
        return all(evaluate(item, render) for item in condition.all)
    if isinstance(condition, AnyOf):
        return any(evaluate(item, render) for item in condition.any)
    if isinstance(condition, NotOf):
        return not evaluate(condition.not_, render)
    assert isinstance(condition, Comparison)
    left = render(condition.left)
    if condition.op == "has_value":
        return has_value(left)
    right = render(condition.right)
    if condition.op == "equals":
        return json_equal(left, right)
    if condition.op == "not_equals":
        return not json_equal(left, right)
    if condition.op in ("in", "not_in"):
        return _contains(condition.op, left, right)
    return _ordered(condition.op, left, right)
