"""The engine: runs an action's nodes in order, one trace entry each; knows no node type."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app.errors import RunFailed

if TYPE_CHECKING:
    from app.pipeline.context import RunContext
    from app.pipeline.nodes.base import ActionNode


class EndExecution(Exception):  # a control-flow signal, not an error
    """Raised by `end_execution` to stop the run successfully."""


async def run_block(nodes: Sequence[ActionNode], ctx: RunContext, path: str) -> None:
    """Run nodes in order, one trace entry each (appended when the node starts)."""
    for index, node in enumerate(nodes):
        node_path = f"{path}[{index}]"
        entry: dict[str, Any] = {"path": node_path, "type": node.type}
        if node.label:
            entry["label"] = node.label
        ctx.trace.append(entry)
        started = time.perf_counter()
        try:
            await node.run(ctx, node_path, entry)
        except RunFailed as exc:
            entry["outcome"] = "failed"
            entry.setdefault("error", {"type": exc.error_type, "message": exc.message})
            raise
        except EndExecution:
            entry["outcome"] = "ended"
            raise
        else:
            entry["outcome"] = "ok"
        finally:
            entry["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)


async def execute(nodes: Sequence[ActionNode], ctx: RunContext) -> None:
    """Walk a whole action; `end_execution` ends it early and successfully."""
    try:
        await run_block(nodes, ctx, "action")
    except EndExecution:
        return
