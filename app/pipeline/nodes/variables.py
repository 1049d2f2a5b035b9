"""`update_object`: sets service variables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from app.pipeline.nodes.base import VARIABLE_NAME_PATTERN, Flow, NodeBase

if TYPE_CHECKING:
    from app.pipeline.context import RunContext


class UpdateObjectNode(NodeBase):
    """Sets service variables: `{"values": {"token": null}}`."""

    type: Literal["update_object"]
    values: dict[Annotated[str, Field(pattern=VARIABLE_NAME_PATTERN)], Any] = Field(min_length=1)

    def variables_set(self) -> Sequence[str]:
        """Every variable it names."""
        return list(self.values)

    def flows(self) -> Sequence[Flow]:
        """Each variable from its own value."""
        return [
            Flow("variable", f".values.{name}", value, name) for name, value in self.values.items()
        ]

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        """Set each variable to its rendered value."""
        for name, value in self.values.items():
            ctx.variables[name] = ctx.render(value)
        entry["variables"] = sorted(self.values)
