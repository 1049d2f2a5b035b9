"""`log`: a message in the run trace and the server log."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from app.pipeline.bindings import as_text
from app.pipeline.nodes.base import Flow, NodeBase

if TYPE_CHECKING:
    from app.pipeline.context import RunContext

logger = logging.getLogger("tokenfarm.run")
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class LogNode(NodeBase):
    """Adds a message to the run trace (secret values redacted)."""

    type: Literal["log"]
    message: str = Field(min_length=1, max_length=2000)
    level: Literal["debug", "info", "warning", "error"] = "info"

    def flows(self) -> Sequence[Flow]:
        """The message goes to the trace and the server log."""
        return [Flow("output", ".message", self.message)]

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        """Add the message to the trace and the server log, secret values redacted."""
        message = as_text(ctx.render(self.message))
        entry["level"] = self.level
        entry["message"] = message
        # The server log keeps it even when the run is not recorded (success without enable_log).
        redacted = ctx.redactor.text(message)
        logger.log(LOG_LEVELS[self.level], "run %s %s: %s", ctx.run_id, path, redacted)
