"""What every node type shares: the strict base model, the name patterns, and `ActionNode`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from app.pipeline.context import RunContext

SECRET_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,127}$"  # noqa: S105 - a pattern, not a secret
VARIABLE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


FlowKind = Literal["variable", "secret", "output", "condition"]


@dataclass(frozen=True)
class Flow:
    """Where a value a node handles goes, for the save-time analysis (app/pipeline/analysis.py).

    `value` is action JSON: the bindings in it are where the value comes from (a variable set from
    an upstream's answer says `"{{ response.body }}"`). `kind` is where it goes:

    - `variable`: into the variable `target`;
    - `secret`: stored as the value of the secret `target`;
    - `output`: somewhere a caller or a reader of runs, logs or secret metadata sees it;
    - `condition`: compared by the operator `target` (`value` holds the operands).
    """

    kind: FlowKind
    field: str  # where in the node, appended to its path: `.response`, `.condition.all[0]`
    value: Any
    target: str | None = None


def secret_binding(name: str) -> str:
    """The binding that reads secret `name`, as a flow's value names it."""
    return f"{{{{ secrets.{name} }}}}"


class Strict(BaseModel):
    """Base of the action models: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ActionNode(Protocol):
    """One node type: its schema, what it means to the analysis, and how it runs.

    A node type is a `NodeBase` model with `type: Literal["..."]`, listed once in
    `app/pipeline/nodes/registry.py`: that entry puts it into the action union (validation, the
    OpenAPI schema, error messages), the engine and the analysis. Neither of them asks which type a
    node is; they call these methods. `NodeBase` answers "nothing" to each question (and, for
    `flows`, "every variable I set is made from everything I read"), so a node overrides only what
    it has: nested blocks, secrets it names, variables it sets, where values go, extra checks.
    Nodes are shared by every run of the same action text, so `run` never changes the node: a
    run's state lives in its `RunContext`.
    """

    @property
    def type(self) -> str: ...

    @property
    def label(self) -> str | None: ...

    def blocks(self) -> Sequence[tuple[str, Sequence[ActionNode]]]:
        """Nested node lists by the name they have in JSON and paths (`then`, `else`)."""
        ...

    def own_fields(self) -> dict[str, Any]:
        """The node's fields as JSON without its blocks: where its own bindings are."""
        ...

    def secrets_read(self) -> Sequence[tuple[str, str]]:
        """(field, secret) of each secret a field names outright (bindings are found apart)."""
        ...

    def secrets_written(self) -> Sequence[tuple[str, str]]:
        """(field, secret) of each secret the node writes."""
        ...

    def variables_set(self) -> Sequence[str]:
        """Variables the node sets."""
        ...

    def flows(self) -> Sequence[Flow]:
        """Where the values the node handles go: the variables it sets and from what, and what it
        stores, shows or compares. The analysis refuses an action whose flows would show a
        secret, store it where its author couldn't read it, or compare it with what a caller or
        an upstream controls; so a node type that shows, stores or compares anything says so."""
        ...

    def check(self, path: str) -> None:
        """Refuse, with `ActionInvalid` at `path` or below, what the schema alone can't tell."""
        ...

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        """Run the node at `path`, recording what the trace shows into `entry`."""
        ...


class NodeBase(Strict):
    """Fields every node may carry."""

    label: str | None = Field(None, max_length=200, description="Shown in the run trace.")

    def blocks(self) -> Sequence[tuple[str, Sequence[ActionNode]]]:
        """No nested blocks."""
        return ()

    def own_fields(self) -> dict[str, Any]:
        """The fields as JSON (aliases, nulls left out), without nested blocks."""
        dumped = self.model_dump(by_alias=True, mode="json", exclude_none=True)
        for name, _ in self.blocks():
            dumped.pop(name, None)
        return dumped

    def secrets_read(self) -> Sequence[tuple[str, str]]:
        """No secret named outright."""
        return ()

    def secrets_written(self) -> Sequence[tuple[str, str]]:
        """No secret written."""
        return ()

    def variables_set(self) -> Sequence[str]:
        """No variable set."""
        return ()

    def flows(self) -> Sequence[Flow]:
        """Each variable it sets, made from everything the node reads (its fields' bindings and
        the secrets it names): safe for any node; nodes that know better say more precisely."""
        sources = [self.own_fields(), *(secret_binding(name) for _, name in self.secrets_read())]
        return [Flow("variable", "", sources, name) for name in self.variables_set()]

    def check(self, path: str) -> None:
        """Nothing beyond the schema."""
