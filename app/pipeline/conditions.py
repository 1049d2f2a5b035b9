"""Evaluation of the condition language: comparisons and all/any/not groups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.errors import BindingError
from app.pipeline.schemas import AllOf, AnyOf, Comparison, NotOf


def has_value(value: Any) -> bool:
    """Not null, not an empty string, list or object."""
    if value is None:
        return False
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _ordered(op: str, left: Any, right: Any) -> bool:
    numbers = (int, float)
    both_numbers = (
        isinstance(left, numbers) and isinstance(right, numbers)
        and not isinstance(left, bool) and not isinstance(right, bool)
    )
    if not (both_numbers or (isinstance(left, str) and isinstance(right, str))):
        # Types only: the operands may be secret values.
        raise BindingError(
            f"'{op}' compares two numbers or two strings, got {_type_name(left)} and {_type_name(right)}"
        )
    if op == "lt":
        return bool(left < right)
    if op == "lte":
        return bool(left <= right)
    if op == "gt":
        return bool(left > right)
    return bool(left >= right)


def _contains(op: str, left: Any, right: Any) -> bool:
    if isinstance(right, (list, dict)):
        found = left in right
    elif isinstance(right, str) and isinstance(left, str):
        found = left in right
    else:
        raise BindingError(f"'{op}' needs a list, an object or a string on the right, got {_type_name(right)}")
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
        return bool(left == right)
    if condition.op == "not_equals":
        return bool(left != right)
    if condition.op in ("in", "not_in"):
        return _contains(condition.op, left, right)
    return _ordered(condition.op, left, right)
