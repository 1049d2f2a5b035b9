"""Control flow: `if`, `try`, `throw` and `end_execution`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from app.errors import CATCHABLE_KINDS, DestinationNotAllowed, RunFailed, Thrown
from app.pipeline.bindings import as_text
from app.pipeline.conditions import AllOf, AnyOf, Comparison, Condition, NotOf, evaluate
from app.pipeline.engine import EndExecution, run_block
from app.pipeline.nodes.base import Flow, NodeBase

if TYPE_CHECKING:
    from app.pipeline.context import RunContext
    from app.pipeline.nodes.base import ActionNode
    from app.pipeline.schemas import Node

ErrorKind = Literal["upstream_error", "timeout", "network", "bad_response", "binding", "thrown"]
assert set(CATCHABLE_KINDS) == set(ErrorKind.__args__)  # type: ignore[attr-defined]


class IfNode(NodeBase):
    """Runs `then` when the condition holds, else `else`."""

    type: Literal["if"]
    condition: Condition
    # `Node` is the union of every registered node type, resolved once they are all known.
    then: list[Node] = Field(default_factory=list)
    else_: list[Node] = Field(default_factory=list, alias="else")

    def blocks(self) -> Sequence[tuple[str, Sequence[ActionNode]]]:
        """`then` and `else`."""
        return [("then", self.then), ("else", self.else_)]

    def flows(self) -> Sequence[Flow]:
        """Each comparison of the condition, with its operands."""
        return [
            Flow(
                "condition",
                f".condition{where}",
                [comparison.left, comparison.right],
                comparison.op,
            )
            for where, comparison in _comparisons(self.condition)
        ]

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        """Run the branch the condition picks."""
        holds = evaluate(self.condition, ctx.render)
        entry["branch"] = "then" if holds else "else"
        if holds:
            await run_block(self.then, ctx, f"{path}.then")
        else:
            await run_block(self.else_, ctx, f"{path}.else")


class TryNode(NodeBase):
    """Runs `do`; on an error of the listed kinds (default: any) runs `catch`."""

    type: Literal["try"]
    do: list[Node] = Field(min_length=1)
    catch: list[Node] = Field(default_factory=list)
    errors: list[ErrorKind] | None = Field(
        None, min_length=1, description="Kinds of error to catch; absent catches every kind."
    )

    def blocks(self) -> Sequence[tuple[str, Sequence[ActionNode]]]:
        """`do` and `catch`."""
        return [("do", self.do), ("catch", self.catch)]

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        """Run `do`, and `catch` on a listed kind of error (`error.*` bindings see it)."""
        try:
            await run_block(self.do, ctx, f"{path}.do")
        except RunFailed as exc:
            if isinstance(exc, DestinationNotAllowed):
                raise  # no action may route around where a secret may go
            if self.errors is not None and exc.kind not in self.errors:
                raise
            entry["caught"] = exc.error_type
            outer, ctx.error = ctx.error, exc
            try:
                await run_block(self.catch, ctx, f"{path}.catch")
            finally:
                ctx.error = outer


class ThrowNode(NodeBase):
    """Fails the run with a status and message."""

    type: Literal["throw"]
    status: int = Field(400, ge=400, le=599)
    message: str = Field(min_length=1, max_length=1000)

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        """Fail the run with the node's status and message."""
        raise Thrown(as_text(ctx.render(self.message)), status_code=self.status)

    def flows(self) -> Sequence[Flow]:
        """The message goes to the caller, the run record and any `catch`."""
        return [Flow("output", ".message", self.message)]


class EndExecutionNode(NodeBase):
    """Ends the run successfully; `response` becomes the run's response."""

    type: Literal["end_execution"]
    response: Any = None

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        """Stop the run successfully with the rendered response."""
        ctx.result = ctx.render(self.response)
        raise EndExecution

    def flows(self) -> Sequence[Flow]:
        """The response goes to the caller."""
        return [Flow("output", ".response", self.response)]


def _comparisons(condition: Any, where: str = "") -> Iterator[tuple[str, Comparison]]:
    """Every comparison of a condition, with its path below `condition`."""
    if isinstance(condition, Comparison):
        yield where, condition
    elif isinstance(condition, AllOf):
        for index, item in enumerate(condition.all):
            yield from _comparisons(item, f"{where}.all[{index}]")
    elif isinstance(condition, AnyOf):
        for index, item in enumerate(condition.any):
            yield from _comparisons(item, f"{where}.any[{index}]")
    elif isinstance(condition, NotOf):
        yield from _comparisons(condition.not_, f"{where}.not")
