"""Every node type, by its `type`: the one list the action union, the engine and the analysis
are built from. Adding a node type is writing its class (see `ActionNode`) and one line here."""

from __future__ import annotations

from typing import Any, get_args

from app.pipeline.nodes.base import ActionNode
from app.pipeline.nodes.control import EndExecutionNode, IfNode, ThrowNode, TryNode
from app.pipeline.nodes.log import LogNode
from app.pipeline.nodes.sign_jwt import SignJwtNode
from app.pipeline.nodes.update_secret import UpdateSecretNode
from app.pipeline.nodes.variables import UpdateObjectNode
from app.pipeline.nodes.web_request import WebRequestNode

# The order is that of the union in the OpenAPI schema and of "known: ..." in error messages.
NODE_CLASSES: dict[str, type[ActionNode]] = {
    "update_object": UpdateObjectNode,
    "web_request": WebRequestNode,
    "if": IfNode,
    "update_secret": UpdateSecretNode,
    "try": TryNode,
    "throw": ThrowNode,
    "end_execution": EndExecutionNode,
    "log": LogNode,
    "sign_jwt": SignJwtNode,
}


def declared_type(model: type[Any]) -> str:
    """The `type` a node model declares (`type: Literal["if"]` -> "if")."""
    literal = model.model_fields["type"].annotation
    (name,) = get_args(literal)
    return str(name)
