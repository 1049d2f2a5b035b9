"""The analysis of an action (app/pipeline/analysis.py): the compiled form runs share, and where
a secret may go (docs/action-language.md, "What an action may do with a secret")."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.errors import ActionInvalid
from app.pipeline.analysis import author_needs, compile_action, validate_action
from app.pipeline.schemas import CANONICAL_ACTION_EXAMPLE, dump_action


def test_one_text_is_parsed_once_and_says_what_it_reads_and_writes() -> None:
    first = compile_action(copy.deepcopy(CANONICAL_ACTION_EXAMPLE))
    again = compile_action(copy.deepcopy(CANONICAL_ACTION_EXAMPLE))
    assert again is first
    assert first.reads == {"CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN", "ACCESS_TOKEN"}
    assert [name for _, name in first.targets] == ["ACCESS_TOKEN", "REFRESH_TOKEN"]
    assert dump_action(list(first.nodes)) == CANONICAL_ACTION_EXAMPLE


def test_another_text_even_in_key_order_only_is_another_action() -> None:
    # The order of form fields is the order they are sent in: it is part of the action.
    reordered = copy.deepcopy(CANONICAL_ACTION_EXAMPLE)
    form = reordered[1]["body"]["form"]
    reordered[1]["body"]["form"] = dict(reversed(list(form.items())))
    compiled = compile_action(reordered)
    assert compiled is not compile_action(copy.deepcopy(CANONICAL_ACTION_EXAMPLE))
    assert list(dump_action(list(compiled.nodes))[1]["body"]["form"]) == [
        "refresh_token",
        "grant_type",
    ]


SECRETS = {"CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN", "ACCESS_TOKEN", "MINE", "SA_KEY"}
ORACLE_CONDITION = {
    "op": "lt",
    "left": "{{ secrets.CLIENT_SECRET }}",
    "right": "{{ request.query.g }}",
}


def oracle(condition: dict[str, Any], *before: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's oracle: `end_execution` answers which way a condition went."""
    return [
        *before,
        {
            "type": "if",
            "condition": condition,
            "then": [{"type": "end_execution", "response": "lt"}],
            "else": [{"type": "end_execution", "response": "ge"}],
        },
    ]


def refusal(action: list[dict[str, Any]]) -> ActionInvalid:
    """The 422 that saving the action gets."""
    with pytest.raises(ActionInvalid) as caught:
        validate_action(action, declared_variables={"d"}, known_secrets=SECRETS)
    return caught.value


def accepted(action: list[dict[str, Any]]) -> list[Any]:
    """The action's nodes, which saving accepts."""
    return validate_action(action, declared_variables={"d"}, known_secrets=SECRETS)


LOG = {"type": "log", "message": "fine"}
SET_FROM_SECRET = {"type": "update_object", "values": {"s": "{{ secrets.CLIENT_SECRET }}"}}
SET_FROM_SET = {"type": "update_object", "values": {"t": "x{{ vars.s }}"}}
SET_FROM_REQUEST = {"type": "update_object", "values": {"g": "{{ request.body.guess }}"}}
ASK_UPSTREAM = {
    "type": "web_request",
    "url": "https://attacker.example/next-guess",
    "result_mapping": {"g": "$.guess"},
}


class TestNoOracles:
    @pytest.mark.parametrize(
        ("action", "path"),
        [
            (oracle(ORACLE_CONDITION), "action[0].condition"),
            (
                oracle(
                    {
                        "op": "in",
                        "left": "{{ request.query.g }}",
                        "right": "{{ secrets.CLIENT_SECRET }}",
                    }
                ),
                "action[0].condition",
            ),
            # Through variables, set in any order (a later one still counts).
            (
                oracle(
                    {"op": "gte", "left": "{{ vars.t }}", "right": "{{ vars.g }}"},
                    SET_FROM_SET,
                    SET_FROM_SECRET,
                    SET_FROM_REQUEST,
                ),
                "action[3].condition",
            ),
            # An upstream's answer is the outside too: its author may run it.
            (
                oracle(
                    {
                        "op": "equals",
                        "left": "{{ vars.g }}",
                        "right": "{{ secrets.CLIENT_SECRET }}",
                    },
                    ASK_UPSTREAM,
                ),
                "action[1].condition",
            ),
            (
                oracle(
                    {
                        "all": [
                            {"op": "has_value", "left": "{{ vars.d }}"},
                            {
                                "not": {
                                    "op": "not_in",
                                    "left": "{{ secrets.SA_KEY.private_key }}",
                                    "right": "{{ response.body }}",
                                }
                            },
                        ]
                    }
                ),
                "action[0].condition.all[1].not",
            ),
            (
                oracle(
                    {"op": "has_value", "left": "{{ request.query.g }}{{ secrets.CLIENT_SECRET }}"}
                ),
                "action[0].condition",
            ),
            # A caught error quotes upstreams.
            (
                [
                    SET_FROM_SECRET,
                    {
                        "type": "try",
                        "do": [LOG],
                        "catch": oracle(
                            {"op": "equals", "left": "{{ error.message }}{{ vars.s }}", "right": 1}
                        ),
                    },
                ],
                "action[1].catch[0].condition",
            ),
        ],
    )
    def test_a_secret_against_the_outside_is_refused_where_it_is_compared(
        self, action: list[dict[str, Any]], path: str
    ) -> None:
        error = refusal(action)
        assert error.extra["path"] == path
        assert "an oracle" in error.message
        assert "'CLIENT_SECRET'" in error.message or "'SA_KEY'" in error.message

    @pytest.mark.parametrize(
        "condition",
        [
            {"op": "has_value", "left": "{{ secrets.CLIENT_SECRET }}"},
            {"op": "equals", "left": "{{ secrets.CLIENT_SECRET }}", "right": "a constant"},
            {"op": "lt", "left": "{{ vars.s }}", "right": "{{ vars.d }}"},  # a declared default
            {"op": "equals", "left": "{{ request.query.g }}", "right": "{{ vars.g }}"},
            {"op": "in", "left": "{{ secrets.CLIENT_ID }}", "right": "{{ secrets.MINE }}"},
            {"op": "gt", "left": "{{ now }}", "right": "{{ secrets.CLIENT_SECRET }}"},
        ],
    )
    def test_a_secret_against_a_constant_or_alone_is_fine(self, condition: dict[str, Any]) -> None:
        accepted(oracle(condition, SET_FROM_SECRET, SET_FROM_REQUEST))


class TestSecretsAreNeverShown:
    @pytest.mark.parametrize(
        ("node", "field"),
        [
            ({"type": "end_execution", "response": {"a": ["{{ secrets.CLIENT_ID }}"]}}, "response"),
            ({"type": "end_execution", "response": "{{ vars.t }}"}, "response"),
            ({"type": "throw", "message": "bad {{ vars.s }}"}, "message"),
            ({"type": "log", "message": "{{ secrets.SA_KEY.private_key }}"}, "message"),
            (
                {
                    "type": "update_secret",
                    "secret": "MINE",
                    "value": "v",
                    "expires_in": "{{ secrets.CLIENT_SECRET }}",
                },
                "expires_in",
            ),
            (
                {"type": "end_execution", "response": "{{ vars.jwt }}"},  # signed with SA_KEY
                "response",
            ),
        ],
    )
    def test_an_output_made_from_a_secret_is_refused(
        self, node: dict[str, Any], field: str
    ) -> None:
        sign = {
            "type": "sign_jwt",
            "algorithm": "HS256",
            "key_secret": "SA_KEY",
            "claims": {},
            "into": "jwt",
        }
        error = refusal([SET_FROM_SECRET, SET_FROM_SET, sign, node])
        assert error.extra["path"] == f"action[3].{field}"
        assert "this would show secret" in error.message

    def test_outputs_of_everything_else_are_fine(self) -> None:
        accepted(
            [
                SET_FROM_REQUEST,
                ASK_UPSTREAM,
                {"type": "log", "message": "{{ vars.g }} {{ response.status }} {{ run.id }}"},
                {"type": "end_execution", "response": {"g": "{{ vars.g }}", "d": "{{ vars.d }}"}},
            ]
        )


class TestWhatSavingNeeds:
    def test_the_canonical_refresh_needs_use_of_what_it_reads_and_no_read(self) -> None:
        nodes = accepted(copy.deepcopy(CANONICAL_ACTION_EXAMPLE))
        assert {need.permission for need in author_needs(nodes)} == {
            "secrets.use:CLIENT_ID",
            "secrets.use:CLIENT_SECRET",
            "secrets.use:REFRESH_TOKEN",
        }

    def test_copying_a_secret_into_another_needs_reading_it(self) -> None:
        action = [
            SET_FROM_SECRET,
            SET_FROM_SET,
            {"type": "update_secret", "secret": "MINE", "value": "{{ vars.t }}"},
            {"type": "update_secret", "secret": "MINE", "value": "{{ secrets.MINE }}-again"},
        ]
        needs = author_needs(accepted(action))
        assert [(n.path, n.permission) for n in needs] == [
            ("action[0].values.s", "secrets.use:CLIENT_SECRET"),
            ("action[3].value", "secrets.use:MINE"),
            ("action[2].value", "secrets.read:CLIENT_SECRET"),
        ]

    def test_a_signing_key_is_used(self) -> None:
        sign = {"type": "sign_jwt", "algorithm": "HS256", "key_secret": "SA_KEY", "into": "jwt"}
        [need] = author_needs(accepted([sign]))
        assert (need.path, need.permission) == ("action[0].key_secret", "secrets.use:SA_KEY")
