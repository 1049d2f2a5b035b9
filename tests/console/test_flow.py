"""An action as a readable flow: steps, nesting, reads and writes, errors placed at nodes."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from app.console.flow import action_flow, place_errors, walk_steps
from app.pipeline.schemas import ACTION_ADAPTER, CANONICAL_ACTION_EXAMPLE
from app.schemas import describe_error, format_location


class TestActionFlow:
    def test_canonical_action_reads_as_steps_with_nested_branches(self) -> None:
        steps = action_flow(CANONICAL_ACTION_EXAMPLE)

        assert [s.type for s in steps] == ["update_object", "web_request", "if"]
        assert steps[0].summary == "set token"
        assert steps[0].writes == ("vars.token",)
        request = steps[1]
        assert request.summary == (
            "POST https://auth.example.com/oauth/token → token, refresh, ttl"
        )
        assert request.reads == (
            "secrets.CLIENT_ID",
            "secrets.CLIENT_SECRET",
            "secrets.REFRESH_TOKEN",
        )
        assert request.writes == ("vars.token", "vars.refresh", "vars.ttl")
        assert request.secrets == ("CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN")
        branch = steps[2]
        assert branch.summary == "if vars.token has value"
        assert [(b.name, [s.path for s in b.steps]) for b in branch.blocks] == [
            ("then", ["action[2].then[0]", "action[2].then[1]"]),
            ("else", ["action[2].else[0]"]),
        ]
        write = branch.blocks[0].steps[0]
        assert write.summary == "write secret ACCESS_TOKEN"
        assert write.writes == ("secrets.ACCESS_TOKEN",)
        assert write.reads == ("vars.token", "vars.ttl")
        nested = branch.blocks[0].steps[1]
        assert nested.blocks[0].steps[0].path == "action[2].then[1].then[0]"
        assert len(list(walk_steps(steps))) == 7

    def test_fields_are_shown_as_written_without_blocks(self) -> None:
        steps = action_flow(CANONICAL_ACTION_EXAMPLE)

        assert '"{{ secrets.CLIENT_SECRET }}"' in steps[1].fields
        assert '"then"' not in steps[2].fields and '"has_value"' in steps[2].fields
        assert '"retry"' not in steps[1].fields  # defaults the author didn't write stay out

    def test_sign_jwt_names_its_key_secret(self) -> None:
        steps = action_flow(
            [{"type": "sign_jwt", "algorithm": "RS256", "key_secret": "SA_KEY", "into": "jwt"}]
        )

        assert steps[0].reads == ("secrets.SA_KEY",)
        assert steps[0].writes == ("vars.jwt",)
        assert steps[0].summary == "sign a RS256 JWT with secret SA_KEY into jwt"


class TestErrorsAtNodes:
    def invalid(self) -> list[dict[str, object]]:
        action = copy.deepcopy(CANONICAL_ACTION_EXAMPLE)
        action[2]["then"][1]["then"][0]["secret"] = "not a name!"  # type: ignore[index]
        action[1]["colour"] = "blue"
        return action

    def test_validation_errors_land_on_the_offending_nodes(self) -> None:
        action = self.invalid()
        with pytest.raises(ValidationError) as caught:
            ACTION_ADAPTER.validate_python(action)
        errors = [(_as_action_path(e["loc"]), describe_error(e)) for e in caught.value.errors()]

        steps = action_flow(action)
        placed = place_errors(steps, errors)

        assert set(placed.by_step) == {"action[1]", "action[2].then[1].then[0]"}
        assert placed.by_step["action[1]"] == ["colour: unknown field"]
        assert placed.by_step["action[2].then[1].then[0]"][0].startswith("secret: ")
        assert placed.unplaced == []
        # The node that doesn't validate is drawn as written; its parents too, children are not.
        by_path = {s.path: s for s in walk_steps(steps)}
        assert not by_path["action[1]"].valid
        assert not by_path["action[2].then[1].then[0]"].valid
        assert not by_path["action[2]"].valid and by_path["action[2]"].blocks
        assert by_path["action[2].then[0]"].valid
        assert by_path["action[1]"].summary.startswith("POST https://auth.example.com")

    def test_errors_outside_any_node_are_kept(self) -> None:
        placed = place_errors(action_flow(CANONICAL_ACTION_EXAMPLE), [("", "bad"), ("x", "y")])

        assert placed.by_step == {}
        assert placed.unplaced == ["bad", "x: y"]

    def test_a_prefix_matches_the_stores_paths(self) -> None:
        steps = action_flow(CANONICAL_ACTION_EXAMPLE, prefix="endpoints[0].action")
        placed = place_errors(
            steps,
            [("endpoints[0].action[10]", "no"), ("endpoints[0].action[1].url", "must be absolute")],
        )

        assert placed.by_step == {"endpoints[0].action[1]": ["url: must be absolute"]}
        assert placed.unplaced == ["endpoints[0].action[10]: no"]

    def test_garbage_is_drawn_not_raised(self) -> None:
        steps = action_flow([42, {"type": "nope", "then": [{"type": "log", "message": "m"}]}])

        assert [s.valid for s in steps] == [False, False]
        assert steps[1].blocks[0].steps[0].valid
        assert action_flow({"not": "a list"}) == []


def _as_action_path(loc: object) -> str:
    return format_location(("action", *loc))  # type: ignore[misc]
