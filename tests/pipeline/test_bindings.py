"""Bindings: `{{ path }}` resolved against a run's state, and never evaluated as code."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.auth.actor import Actor
from app.errors import UpstreamFailed
from app.outbound import Outbound, OutboundResponse
from app.pipeline.bindings import PathError, split_path
from app.pipeline.context import RequestData, RunContext

SA_KEY = json.dumps(
    {
        "client_email": "robot@example.iam",
        "private_key": "-----BEGIN KEY-----\nabc\n-----END KEY-----",
    }
)


@pytest.fixture
async def ctx() -> AsyncIterator[RunContext]:
    """A run context with variables, secrets, a caller's request and a last response."""
    outbound = Outbound(egress_allow="127.0.0.0/8,::1")
    context = RunContext(
        run_id="run-1",
        actor=Actor(kind="system", name="test", permissions=frozenset()),
        outbound=outbound,
        variables={
            "token": "abc",
            "ttl": 3600,
            "ratio": 0.5,
            "flag": True,
            "nothing": None,
            "obj": {"a": 1, "b": [1, 2]},
            "items": [{"id": "first"}, {"id": "second"}],
        },
        secrets={"SA_KEY": SA_KEY, "OBJ": {"nested": {"key": "v"}}, "PLAIN": "plain-value"},
        request=RequestData(
            query={"name": "alice"},
            body={"user": {"id": 42, "tags": ["x", "y"]}},
            headers={"X-Custom": "hdr"},
        ),
        clock=lambda: 1_700_000_000.75,
    )
    try:
        yield context
    finally:
        await outbound.aclose()


class TestSingleBinding:
    @pytest.mark.parametrize(
        ("template", "expected"),
        [
            ("{{ vars.ttl }}", 3600),
            ("{{ vars.ratio }}", 0.5),
            ("{{ vars.flag }}", True),
            ("{{ vars.nothing }}", None),
            ("{{ vars.obj }}", {"a": 1, "b": [1, 2]}),
            ("{{ vars.items }}", [{"id": "first"}, {"id": "second"}]),
            ("{{vars.ttl}}", 3600),
            ("  {{   vars.ttl   }}  ", 3600),
        ],
    )
    def test_yields_the_raw_value(self, ctx: RunContext, template: str, expected: Any) -> None:
        assert ctx.render(template) == expected

    def test_missing_path_yields_null(self, ctx: RunContext) -> None:
        assert ctx.render("{{ vars.undefined }}") is None
        assert ctx.render("{{ vars.obj.missing.deeper }}") is None

    def test_renders_inside_objects_and_lists(self, ctx: RunContext) -> None:
        rendered = ctx.render({"a": ["{{ vars.ttl }}", "x-{{ vars.token }}"], "b": {"c": 7}})
        assert rendered == {"a": [3600, "x-abc"], "b": {"c": 7}}


class TestInterpolation:
    def test_text_around_a_binding(self, ctx: RunContext) -> None:
        assert ctx.render("Bearer {{ vars.token }}") == "Bearer abc"

    def test_several_bindings_in_one_string(self, ctx: RunContext) -> None:
        assert ctx.render("{{ vars.token }}{{ vars.ttl }}") == "abc3600"

    def test_values_read_as_json_text(self, ctx: RunContext) -> None:
        text = ctx.render("n={{ vars.ttl }} f={{ vars.flag }} o={{ vars.obj }}")
        assert text == 'n=3600 f=true o={"a":1,"b":[1,2]}'

    def test_missing_path_is_empty_text(self, ctx: RunContext) -> None:
        assert ctx.render("[{{ vars.undefined }}]") == "[]"
        assert ctx.render("[{{ vars.nothing }}]") == "[]"

    def test_string_without_bindings_is_unchanged(self, ctx: RunContext) -> None:
        assert ctx.render("{ not a binding } {{ unclosed") == "{ not a binding } {{ unclosed"


class TestPaths:
    def test_addresses_into_a_json_string_secret(self, ctx: RunContext) -> None:
        assert ctx.render("{{ secrets.SA_KEY.private_key }}").startswith("-----BEGIN KEY-----")
        assert ctx.render("{{ secrets.SA_KEY.client_email }}") == "robot@example.iam"

    def test_addresses_into_an_object_secret(self, ctx: RunContext) -> None:
        assert ctx.render("{{ secrets.OBJ.nested.key }}") == "v"

    def test_plain_secret_has_no_fields(self, ctx: RunContext) -> None:
        assert ctx.render("{{ secrets.PLAIN }}") == "plain-value"
        assert ctx.render("{{ secrets.PLAIN.field }}") is None

    def test_list_index(self, ctx: RunContext) -> None:
        assert ctx.render("{{ vars.items.1.id }}") == "second"
        assert ctx.render("{{ vars.obj.b.0 }}") == 1

    def test_list_index_out_of_range_is_null(self, ctx: RunContext) -> None:
        assert ctx.render("{{ vars.items.5.id }}") is None

    def test_request_parts(self, ctx: RunContext) -> None:
        assert ctx.render("{{ request.query.name }}") == "alice"
        assert ctx.render("{{ request.body.user.id }}") == 42
        assert ctx.render("{{ request.body.user.tags.1 }}") == "y"
        assert ctx.render("{{ request.headers.x-custom }}") == "hdr"
        assert ctx.render("{{ request.headers.X-CUSTOM }}") == "hdr"

    def test_response_parts(self, ctx: RunContext) -> None:
        assert ctx.render("{{ response.status }}") is None
        ctx.response = OutboundResponse(
            status=201, headers={"x-request-id": "r-9"}, content=b'{"data": {"token": "t"}}'
        )
        ctx.response_json = {"data": {"token": "t"}}
        assert ctx.render("{{ response.status }}") == 201
        assert ctx.render("{{ response.headers.X-Request-Id }}") == "r-9"
        assert ctx.render("{{ response.body.data.token }}") == "t"

    def test_run_and_now(self, ctx: RunContext) -> None:
        assert ctx.render("{{ run.id }}") == "run-1"
        assert ctx.render("{{ now }}") == 1_700_000_000

    def test_error_only_inside_a_catch(self, ctx: RunContext) -> None:
        assert ctx.render("{{ error.type }}") is None
        ctx.error = UpstreamFailed("GET example.com/x answered 500", upstream_status=500)
        assert ctx.render("{{ error.type }}") == "upstream_error"
        assert ctx.render("{{ error.kind }}") == "upstream_error"
        assert ctx.render("{{ error.message }}") == "GET example.com/x answered 500"


class TestPathGrammar:
    @pytest.mark.parametrize(
        "path",
        [
            "vars.token",
            "secrets.SA_KEY.private_key",
            "vars.items.0.id",
            "request.query.q",
            "request.body",
            "request.headers.X-Custom",
            "response.body.a.b",
            "response.status",
            "run.id",
            "now",
            "error.message",
        ],
    )
    def test_accepts_the_documented_paths(self, path: str) -> None:
        assert split_path(path)[0] == path.split(".")[0]

    @pytest.mark.parametrize(
        ("path", "complaint"),
        [
            ("env.HOME", "unknown root 'env'"),
            ("os.environ", "unknown root 'os'"),
            ("now.x", "'now' takes no further path"),
            ("vars", "needs a name"),
            ("secrets", "needs a name"),
            ("request", "request.query.X"),
            ("request.foo", "request.query.X"),
            ("response.foo", "response.status"),
            ("response.status.code", "'response.status' takes no further path"),
            ("run.secret", "run.id"),
            ("error.traceback", "error.type"),
            ("", "is not a binding path"),
            ("vars..token", "is not a binding path"),
            ("vars.token extra", "is not a binding path"),
        ],
    )
    def test_refuses_paths_outside_the_grammar(self, path: str, complaint: str) -> None:
        with pytest.raises(PathError) as caught:
            split_path(path)
        assert complaint in str(caught.value)


class TestNothingIsEvaluated:
    @pytest.mark.parametrize(
        "template",
        [
            "{{ __import__('os') }}",
            "{{ 1 + 1 }}",
            "{{ vars.token | upper }}",
            "{{ vars.token() }}",
            "{{ vars['token'] }}",
        ],
    )
    def test_expressions_are_refused_as_paths(self, ctx: RunContext, template: str) -> None:
        with pytest.raises(PathError):
            ctx.render(template)

    def test_code_in_a_binding_is_never_executed(self, ctx: RunContext, tmp_path: Path) -> None:
        marker = tmp_path / "executed"
        template = f"{{{{ __import__('pathlib').Path('{marker}').touch() }}}}"
        with pytest.raises(PathError, match="is not a binding path"):
            ctx.render(template)
        assert not marker.exists()

    def test_dunder_names_are_keys_never_attributes(self, ctx: RunContext) -> None:
        assert ctx.render("{{ vars.token.__class__ }}") is None
        assert ctx.render("{{ vars.obj.__len__ }}") is None
        assert ctx.render("{{ vars.items.__class__.__name__ }}") is None

    def test_resolved_values_are_not_rendered_again(self, ctx: RunContext) -> None:
        ctx.request.query["q"] = "{{ secrets.PLAIN }}"
        assert ctx.render("{{ request.query.q }}") == "{{ secrets.PLAIN }}"
        assert ctx.render("q={{ request.query.q }}") == "q={{ secrets.PLAIN }}"
