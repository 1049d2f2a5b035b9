"""The condition language: every comparison, all/any/not groups, and how conditions are saved."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from app.errors import BindingError
from app.pipeline.bindings import render
from app.pipeline.conditions import evaluate
from app.pipeline.schemas import Condition

CONDITION: TypeAdapter[Any] = TypeAdapter(Condition)
VARIABLES: dict[str, Any] = {
    "token": "s3cr3t-token-value",
    "pin": 12345678,
    "empty": "",
    "items": ["a", "b"],
    "obj": {"k": "v"},
}


def holds(raw: dict[str, Any], variables: dict[str, Any] | None = None) -> bool:
    """Whether a condition, written as JSON and validated as it would be when saved, holds."""
    values = VARIABLES if variables is None else variables

    def resolve(segments: list[str]) -> Any:
        assert segments[0] == "vars"
        return values.get(segments[1])

    return evaluate(CONDITION.validate_python(raw), lambda value: render(value, resolve))


def cmp(op: str, left: Any, right: Any = None) -> dict[str, Any]:
    """A comparison; `has_value` gets no `right`."""
    return (
        {"op": op, "left": left} if op == "has_value" else {"op": op, "left": left, "right": right}
    )


class TestHasValue:
    @pytest.mark.parametrize("value", [None, "", [], {}])
    def test_empty_values_have_none(self, value: Any) -> None:
        assert holds(cmp("has_value", "{{ vars.x }}"), {"x": value}) is False

    @pytest.mark.parametrize("value", ["x", 0, False, 0.0, [None], {"a": None}])
    def test_anything_else_has_one(self, value: Any) -> None:
        assert holds(cmp("has_value", "{{ vars.x }}"), {"x": value}) is True

    def test_a_missing_variable_has_none(self) -> None:
        assert holds(cmp("has_value", "{{ vars.undefined }}")) is False


class TestEquality:
    @pytest.mark.parametrize(
        ("left", "right", "equal"),
        [
            ("a", "a", True),
            ("a", "b", False),
            (1, 1.0, True),
            (1, "1", False),
            (True, 1, False),
            (False, 0, False),
            (None, None, True),
            (None, "", False),
            ([1, True], [1, True], True),
            ([1], [True], False),
            ({"a": [1]}, {"a": [1]}, True),
            ({"a": 1}, {"a": 1, "b": 2}, False),
        ],
    )
    def test_compares_as_json_values(self, left: Any, right: Any, equal: bool) -> None:
        assert holds(cmp("equals", left, right)) is equal
        assert holds(cmp("not_equals", left, right)) is not equal

    def test_compares_bound_values(self) -> None:
        assert holds(cmp("equals", "{{ vars.token }}", "s3cr3t-token-value")) is True
        assert holds(cmp("equals", "{{ vars.pin }}", 12345678)) is True
        assert holds(cmp("equals", "{{ vars.undefined }}", None)) is True


class TestOrdering:
    @pytest.mark.parametrize(
        ("op", "left", "right", "expected"),
        [
            ("lt", 1, 2, True),
            ("lt", 2, 2, False),
            ("lte", 2, 2, True),
            ("lte", 3, 2, False),
            ("gt", 3, 2.5, True),
            ("gt", 2, 2, False),
            ("gte", 2, 2, True),
            ("gte", 1, 2, False),
            ("lt", "2024-01-01", "2025-01-01", True),
            ("gt", "b", "a", True),
        ],
    )
    def test_orders_numbers_and_strings(
        self, op: str, left: Any, right: Any, expected: bool
    ) -> None:
        assert holds(cmp(op, left, right)) is expected

    @pytest.mark.parametrize("op", ["lt", "lte", "gt", "gte"])
    @pytest.mark.parametrize(
        ("left", "right", "types"),
        [
            ("{{ vars.token }}", "{{ vars.pin }}", "string and number"),
            ("{{ vars.pin }}", True, "number and boolean"),
            ("{{ vars.undefined }}", 1, "null and number"),
            ("{{ vars.items }}", "{{ vars.obj }}", "array and object"),
        ],
    )
    def test_mismatched_types_fail_without_naming_values(
        self, op: str, left: Any, right: Any, types: str
    ) -> None:
        with pytest.raises(BindingError) as caught:
            holds(cmp(op, left, right))
        message = caught.value.message
        assert f"'{op}'" in message
        assert types in message
        assert "s3cr3t" not in message
        assert "12345678" not in message


class TestMembership:
    @pytest.mark.parametrize(
        ("left", "right", "inside"),
        [
            ("a", ["a", "b"], True),
            ("c", ["a", "b"], False),
            (1, [1, 2], True),
            (True, [1, 2], False),
            ({"k": 1}, [{"k": 1}], True),
            ("ell", "hello", True),
            ("xyz", "hello", False),
            ("k", {"k": "v"}, True),
            ("v", {"k": "v"}, False),
        ],
    )
    def test_in_and_not_in(self, left: Any, right: Any, inside: bool) -> None:
        assert holds(cmp("in", left, right)) is inside
        assert holds(cmp("not_in", left, right)) is not inside

    def test_bound_list_and_string(self) -> None:
        assert holds(cmp("in", "b", "{{ vars.items }}")) is True
        assert holds(cmp("in", "cr3t", "{{ vars.token }}")) is True
        assert holds(cmp("not_in", "z", "{{ vars.items }}")) is True

    @pytest.mark.parametrize("op", ["in", "not_in"])
    @pytest.mark.parametrize(
        ("left", "right", "complaint"),
        [
            (
                "a",
                "{{ vars.pin }}",
                "needs an array, an object or a string on the right, got number",
            ),
            ("a", None, "got null"),
            ("{{ vars.pin }}", "{{ vars.token }}", "looks for a string in a string, got number"),
            ({"a": 1}, {"b": 2}, "looks for a string in an object's keys, got object"),
        ],
    )
    def test_wrong_types_fail_without_naming_values(
        self, op: str, left: Any, right: Any, complaint: str
    ) -> None:
        with pytest.raises(BindingError) as caught:
            holds(cmp(op, left, right))
        assert complaint in caught.value.message
        assert "s3cr3t" not in caught.value.message
        assert "12345678" not in caught.value.message


class TestGroups:
    TRUE = cmp("equals", 1, 1)
    FALSE = cmp("equals", 1, 2)

    @pytest.mark.parametrize(
        ("group", "expected"),
        [
            ({"all": [TRUE, TRUE]}, True),
            ({"all": [TRUE, FALSE]}, False),
            ({"any": [FALSE, TRUE]}, True),
            ({"any": [FALSE, FALSE]}, False),
            ({"not": TRUE}, False),
            ({"not": FALSE}, True),
        ],
    )
    def test_groups(self, group: dict[str, Any], expected: bool) -> None:
        assert holds(group) is expected

    def test_groups_nest(self) -> None:
        condition = {
            "all": [
                {"any": [self.FALSE, {"not": self.FALSE}]},
                {"not": {"all": [self.TRUE, self.FALSE]}},
                cmp("has_value", "{{ vars.token }}"),
            ]
        }
        assert holds(condition) is True
        assert holds({"not": condition}) is False

    def test_any_stops_at_the_first_true(self) -> None:
        would_fail = cmp("lt", "{{ vars.token }}", 1)
        assert holds({"any": [self.TRUE, would_fail]}) is True
        with pytest.raises(BindingError):
            holds({"any": [self.FALSE, would_fail]})

    def test_all_stops_at_the_first_false(self) -> None:
        would_fail = cmp("lt", "{{ vars.token }}", 1)
        assert holds({"all": [self.FALSE, would_fail]}) is False


class TestConditionShape:
    @pytest.mark.parametrize(
        ("raw", "complaint"),
        [
            ({"foo": 1}, "a condition is"),
            ("token", "a condition is"),
            ({"op": "matches", "left": 1, "right": 1}, "Input should be 'has_value'"),
            ({"op": "equals", "left": 1}, "'equals' needs 'right'"),
            ({"op": "in", "right": [1]}, "'in' needs 'left'"),
            ({"op": "has_value", "left": 1, "right": 2}, "'has_value' takes only 'left'"),
            ({"op": "equals", "left": 1, "right": 1, "extra": 1}, "Extra inputs"),
            ({"all": []}, "at least 1 item"),
            ({"any": [{"bad": True}]}, "a condition is"),
            ({"not": {"op": "lt", "left": 1}}, "'lt' needs 'right'"),
        ],
    )
    def test_refused_when_saved(self, raw: Any, complaint: str) -> None:
        with pytest.raises(ValidationError) as caught:
            CONDITION.validate_python(raw)
        assert complaint in str(caught.value)

    def test_null_operands_are_allowed_when_written(self) -> None:
        assert holds({"op": "equals", "left": None, "right": "{{ vars.undefined }}"}) is True
