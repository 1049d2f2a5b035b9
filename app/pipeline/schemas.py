"""The action models: an action is a list of nodes in a discriminated union on `type`.

The union is built from `NODE_CLASSES` (app/pipeline/nodes/registry.py), so a node type listed
there is validated, documented in the OpenAPI schema and named in error messages with no other
edit. These models are validated when an endpoint is saved, so a bad action is refused with the
path of the offending node before it can ever run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, TypeAlias, Union

from pydantic import Field, TypeAdapter

from app.pipeline.conditions import AllOf, AnyOf, Comparison, Condition, NotOf
from app.pipeline.nodes.base import (
    SECRET_NAME_PATTERN,
    VARIABLE_NAME_PATTERN,
    ActionNode,
    NodeBase,
    Strict,
)
from app.pipeline.nodes.registry import NODE_CLASSES, declared_type
from app.pipeline.nodes.sign_jwt import SECRET_FIELD_PATTERN

__all__ = [
    "ACTION_ADAPTER",
    "CANONICAL_ACTION_EXAMPLE",
    "NODE_TYPES",
    "SECRET_FIELD_PATTERN",
    "SECRET_NAME_PATTERN",
    "VARIABLE_NAME_PATTERN",
    "Action",
    "AllOf",
    "AnyOf",
    "Comparison",
    "Condition",
    "Node",
    "NodeBase",
    "NotOf",
    "Strict",
    "dump_action",
    "parse_action",
]

for _name, _model in NODE_CLASSES.items():
    if declared_type(_model) != _name:
        raise TypeError(f"{_model.__name__} is registered as {_name!r} but declares another type")

NODE_TYPES = tuple(NODE_CLASSES)

if TYPE_CHECKING:
    Node: TypeAlias = ActionNode
else:
    Node = Annotated[Union[tuple(NODE_CLASSES.values())], Field(discriminator="type")]  # noqa: UP007

# Nodes that hold nodes (`if`, `try`) name `Node` before it exists; now it does.
for _model in NODE_CLASSES.values():
    if not _model.__pydantic_complete__:  # type: ignore[attr-defined]
        _model.model_rebuild(_types_namespace={"Node": Node})  # type: ignore[attr-defined]

Action = list[Node]
ACTION_ADAPTER: TypeAdapter[list[Any]] = TypeAdapter(Action)


def parse_action(raw: list[dict[str, Any]]) -> list[Any]:
    """Stored action JSON -> node models (already validated when saved)."""
    return ACTION_ADAPTER.validate_python(raw)


def dump_action(nodes: list[Any]) -> list[dict[str, Any]]:
    """Node models -> JSON as the user wrote it (aliases, no unset defaults)."""
    return ACTION_ADAPTER.dump_python(nodes, by_alias=True, exclude_unset=True, mode="json")


CANONICAL_ACTION_EXAMPLE: list[dict[str, Any]] = [
    {"type": "update_object", "values": {"token": None}},
    {
        "type": "web_request",
        "method": "POST",
        "url": "https://auth.example.com/oauth/token",
        "auth": {
            "type": "basic",
            "username": "{{ secrets.CLIENT_ID }}",
            "password": "{{ secrets.CLIENT_SECRET }}",
        },
        "body": {
            "form": {"grant_type": "refresh_token", "refresh_token": "{{ secrets.REFRESH_TOKEN }}"}
        },
        "result_mapping": {
            "token": "$.access_token",
            "refresh": "$.refresh_token",
            "ttl": "$.expires_in",
        },
    },
    {
        "type": "if",
        "condition": {"op": "has_value", "left": "{{ vars.token }}"},
        "then": [
            {
                "type": "update_secret",
                "secret": "ACCESS_TOKEN",
                "value": "{{ vars.token }}",
                "expires_in": "{{ vars.ttl }}",
            },
            {
                "type": "if",
                "condition": {"op": "has_value", "left": "{{ vars.refresh }}"},
                "then": [
                    {
                        "type": "update_secret",
                        "secret": "REFRESH_TOKEN",
                        "value": "{{ vars.refresh }}",
                    }
                ],
            },
        ],
        "else": [
            {
                "type": "throw",
                "status": 502,
                "message": "the token endpoint returned no access_token",
            }
        ],
    },
]
