"""The compiled form of a stored action that runs share (app/pipeline/analysis.py)."""

from __future__ import annotations

import copy

from app.pipeline.analysis import compile_action
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
