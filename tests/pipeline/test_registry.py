"""Node types are registered once (app/pipeline/nodes/registry.py) and everything follows from it.

The throwaway node type is added in a fresh interpreter, the way a developer adds one: a class
and one entry in `NODE_CLASSES`, before anything builds the action union.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from app.pipeline.nodes.base import NodeBase
from app.pipeline.nodes.registry import NODE_CLASSES, declared_type
from app.pipeline.schemas import ACTION_ADAPTER, NODE_TYPES

THROWAWAY_NODE = """
import asyncio
import json
from typing import Any, Literal

from app.pipeline.nodes import registry
from app.pipeline.nodes.base import NodeBase


class CopyNode(NodeBase):
    \"\"\"Copies a secret into a variable (a node type no one else knows).\"\"\"

    type: Literal["copy"]
    secret: str
    into: str

    def secrets_read(self):
        return [("secret", self.secret)]

    def variables_set(self):
        return [self.into]

    async def run(self, ctx, path, entry):
        ctx.variables[self.into] = ctx.secrets[self.secret]
        entry["into"] = self.into


registry.NODE_CLASSES["copy"] = CopyNode

from app.errors import ActionInvalid
from app.pipeline.analysis import referenced_secrets, validate_action
from app.pipeline.context import RunContext
from app.pipeline.engine import execute
from app.pipeline.schemas import NODE_TYPES, dump_action
from app.schemas import describe_error

copy = {"type": "copy", "secret": "API_KEY", "into": "key"}
action = [
    {"type": "if", "condition": {"op": "has_value", "left": "yes"}, "then": [copy]},
    {
        "type": "if",
        "condition": {"op": "has_value", "left": "{{ vars.key }}"},
        "then": [{"type": "end_execution", "response": "copied"}],
    },
]
# `vars.key` is known only because the nested copy node says it sets it.
nodes = validate_action(action, declared_variables=set(), known_secrets={"API_KEY"})
try:
    validate_action(action, declared_variables=set(), known_secrets=set())
except ActionInvalid as exc:
    unknown = str(exc)
# The node says nothing of flows: by default what it sets is made from what it reads.
try:
    validate_action(
        [copy, {"type": "end_execution", "response": "{{ vars.key }}"}],
        declared_variables=set(),
        known_secrets={"API_KEY"},
    )
except ActionInvalid as exc:
    shown = str(exc)
ctx = RunContext(
    run_id="run-1", actor=None, outbound=None, variables={}, secrets={"API_KEY": "k-123"}
)
asyncio.run(execute(nodes, ctx))
print(json.dumps({
    "types": list(NODE_TYPES),
    "dumped": dump_action(nodes),
    "reads": sorted(referenced_secrets(nodes)),
    "unknown_secret": unknown,
    "shown": shown,
    "result": ctx.result,
    "trace": [[entry["path"], entry["type"], entry["outcome"]] for entry in ctx.trace],
    "message": describe_error({"type": "union_tag_invalid", "ctx": {"tag": "nope"}}),
}))
"""


def python(script: str) -> subprocess.CompletedProcess[str]:
    """Run a script in a fresh interpreter (nothing of this test process's imports)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestRegistry:
    @pytest.mark.parametrize(("name", "model"), NODE_CLASSES.items())
    def test_every_node_is_a_model_of_its_type_with_a_runner(
        self, name: str, model: type[Any]
    ) -> None:
        assert issubclass(model, NodeBase)
        assert declared_type(model) == name
        assert inspect.iscoroutinefunction(model.run)
        assert model.__doc__, "the docstring is the node's description in the OpenAPI schema"

    def test_the_action_union_is_the_registry(self) -> None:
        items = ACTION_ADAPTER.json_schema()["items"]
        names = [model.__name__ for model in NODE_CLASSES.values()]
        assert [ref["$ref"].rsplit("/", 1)[1] for ref in items["oneOf"]] == names
        mapping = items["discriminator"]["mapping"]
        assert {name: ref.rsplit("/", 1)[1] for name, ref in mapping.items()} == dict(
            zip(NODE_TYPES, names, strict=True)
        )
        assert list(NODE_TYPES) == list(NODE_CLASSES)

    def test_a_new_node_type_is_one_class_and_one_entry(self) -> None:
        done = python(THROWAWAY_NODE)
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen["types"][-1] == "copy"
        assert seen["dumped"][0]["then"] == [{"type": "copy", "secret": "API_KEY", "into": "key"}]
        assert seen["reads"] == ["API_KEY"]
        assert seen["unknown_secret"] == (
            "action[0].then[0].secret: unknown secret 'API_KEY' (create it first)"
        )
        assert seen["shown"].startswith(
            "action[1].response: this would show secret 'API_KEY' (or a value made from it)"
        )
        assert seen["result"] == "copied"
        assert seen["trace"] == [
            ["action[0]", "if", "ok"],
            ["action[0].then[0]", "copy", "ok"],
            ["action[1]", "if", "ended"],
            ["action[1].then[0]", "end_execution", "ended"],
        ]
        assert seen["message"].endswith("sign_jwt, copy)")

    def test_a_node_registered_under_another_type_is_refused_at_import(self) -> None:
        done = python(
            """
            from app.pipeline.nodes import registry
            from app.pipeline.nodes.log import LogNode

            registry.NODE_CLASSES["note"] = LogNode
            import app.pipeline.schemas
            """
        )
        assert done.returncode != 0
        assert "LogNode is registered as 'note' but declares another type" in done.stderr

    def test_node_schemas_import_without_http_client_or_signing_libraries(self) -> None:
        # The command line reads the node schemas (error wording) and must start fast.
        done = python(
            """
            import sys
            import app.pipeline.schemas
            import app.schemas

            heavy = ("httpx", "sqlalchemy", "fastapi", "jose", "cryptography", "jsonpath_ng")
            print(sorted(name for name in heavy if name in sys.modules))
            """
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[]"
