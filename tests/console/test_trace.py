"""A run's trace as timeline rows: order, nesting, offsets, inputs and outputs, errors."""

from __future__ import annotations

from app.console.trace import timeline

TRACE = [
    {
        "path": "action[0]",
        "type": "update_object",
        "variables": ["token"],
        "outcome": "ok",
        "duration_ms": 1.0,
    },
    {
        "path": "action[1]",
        "type": "web_request",
        "label": "token endpoint",
        "request": "POST http://127.0.0.1:9/token",
        "status": 200,
        "retries": 2,
        "mapped": ["token"],
        "outcome": "ok",
        "duration_ms": 50.0,
    },
    {
        "path": "action[2]",
        "type": "if",
        "branch": "then",
        "outcome": "failed",
        "duration_ms": 20.0,
        "error": {"type": "secret_locked", "message": "X is locked"},
    },
    {
        "path": "action[2].then[0]",
        "type": "update_secret",
        "secret": "X",
        "outcome": "ok",
        "duration_ms": 5.0,
    },
    {
        "path": "action[2].then[1]",
        "type": "update_secret",
        "secret": "Y",
        "outcome": "failed",
        "duration_ms": 10.0,
        "error": {"type": "secret_locked", "message": "X is locked"},
        "future_field": {"a": 1},
    },
    {"path": "action[3]", "type": "log", "message": "after", "level": "info"},
]


class TestTimeline:
    def test_rows_keep_order_depth_and_status(self) -> None:
        rows = timeline(TRACE, run_duration_ms=100.0)

        assert [(r.path, r.depth, r.status) for r in rows] == [
            ("action[0]", 0, "ok"),
            ("action[1]", 0, "ok"),
            ("action[2]", 0, "failed"),
            ("action[2].then[0]", 1, "ok"),
            ("action[2].then[1]", 1, "failed"),
            ("action[3]", 0, "unfinished"),
        ]

    def test_bars_start_after_the_previous_sibling_and_children_with_their_parent(self) -> None:
        rows = {r.path: r for r in timeline(TRACE, run_duration_ms=100.0)}

        assert rows["action[0]"].offset_ms == 0
        assert rows["action[1]"].offset_ms == 1
        assert rows["action[2]"].offset_ms == 51
        assert rows["action[2].then[0]"].offset_ms == 51
        assert rows["action[2].then[1]"].offset_ms == 56
        assert rows["action[3]"].offset_ms == 71
        assert rows["action[1]"].offset_percent == 1.0
        assert rows["action[1]"].width_percent == 50.0
        assert rows["action[3]"].width_percent == 0.5  # unfinished: a sliver, not nothing

    def test_inputs_outputs_errors_and_attempts(self) -> None:
        rows = {r.path: r for r in timeline(TRACE)}

        request = rows["action[1]"]
        assert request.label == "token endpoint"
        assert request.inputs == (("request", "POST http://127.0.0.1:9/token"),)
        assert request.outputs == (("status", "200"), ("mapped", '["token"]'))
        assert request.attempts == 3
        failed = rows["action[2].then[1]"]
        assert (failed.error_type, failed.error_message) == ("secret_locked", "X is locked")
        assert ("future_field", '{"a": 1}') in failed.outputs  # unknown fields are shown
        assert rows["action[0]"].attempts is None
        assert rows["action[0]"].inputs == ()
        assert rows["action[0]"].outputs == (("variables", '["token"]'),)

    def test_the_whole_run_is_at_least_as_long_as_its_nodes(self) -> None:
        rows = timeline(TRACE, run_duration_ms=None)

        assert max(r.offset_percent + r.width_percent for r in rows) <= 100.5
        assert timeline([]) == []
