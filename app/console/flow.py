"""An endpoint's action as a readable flow of steps, for the console's service page.

Each node becomes a `FlowStep`: its type and label, a one-line summary, what it reads (bindings
as written, and secrets it names) and writes (variables, secrets), its own fields as written, and
its nested blocks (`then`/`else`, `do`/`catch`) as steps again. Secrets appear by name only; an
action holds bindings, never values, so showing its fields as written shows no secret.

The flow is built from the action's JSON, not only from parsed nodes, so that a rejected edit can
still be drawn with its validation errors placed at the offending node (`place_errors`): a node
that doesn't validate on its own is shown as written, with `valid=False`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from app.pipeline.bindings import iter_paths
from app.pipeline.schemas import ACTION_ADAPTER

# Nested node lists of a node that didn't validate are found by shape: a list whose items are all
# objects with a `type` (conditions' `all`/`any` hold objects with `op`, so they don't match).
_MAX_SUMMARY = 160


@dataclass(frozen=True)
class FlowStep:
    """One node of an action, as the console shows it."""

    path: str  # `action[2].then[0]` (or `endpoints[0].action[2]` with a prefix)
    type: str
    label: str | None
    summary: str
    reads: tuple[str, ...]  # binding paths as written (`vars.token`), and `secrets.NAME` named
    writes: tuple[str, ...]  # `vars.NAME`, `secrets.NAME`
    fields: str  # the node's own fields (without its blocks) as written, pretty JSON
    blocks: tuple[FlowBlock, ...] = ()
    valid: bool = True

    @property
    def secrets(self) -> tuple[str, ...]:
        """Names of the secrets the node reads or writes."""
        named = (item for item in (*self.reads, *self.writes) if item.startswith("secrets."))
        return tuple(sorted({item.split(".")[1] for item in named}))


@dataclass(frozen=True)
class FlowBlock:
    """A nested list of steps: an `if`'s `then`, a `try`'s `catch`."""

    name: str
    steps: tuple[FlowStep, ...]


@dataclass
class PlacedErrors:
    """Validation errors by the path of the step they belong to; `unplaced` fit no step."""

    by_step: dict[str, list[str]] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.by_step or self.unplaced)


def action_flow(raw: Any, prefix: str = "action") -> list[FlowStep]:
    """The steps of an action given as JSON (stored, or as submitted in an edit)."""
    if not isinstance(raw, list):
        return []
    return [_step(node, f"{prefix}[{index}]") for index, node in enumerate(raw)]


def walk_steps(steps: Iterable[FlowStep]) -> Iterable[FlowStep]:
    """Every step, depth first."""
    for step in steps:
        yield step
        for block in step.blocks:
            yield from walk_steps(block.steps)


def place_errors(steps: Sequence[FlowStep], errors: Iterable[tuple[str, str]]) -> PlacedErrors:
    """Each (path, message) at the deepest step whose path starts it: an error at
    `action[1].then[0].url` belongs to the step `action[1].then[0]`."""
    paths = [step.path for step in walk_steps(steps)]
    placed = PlacedErrors()
    for path, message in errors:
        owner = max(
            (p for p in paths if path == p or path.startswith((f"{p}.", f"{p}["))),
            key=len,
            default=None,
        )
        if owner is None:
            placed.unplaced.append(f"{path}: {message}" if path else message)
        else:
            detail = path[len(owner) :].lstrip(".")
            placed.by_step.setdefault(owner, []).append(
                f"{detail}: {message}" if detail else message
            )
    return placed


def _step(raw: Any, path: str) -> FlowStep:
    if not isinstance(raw, dict):
        text = json.dumps(raw, ensure_ascii=False)
        summary = "not a node (a node is an object)"
        return FlowStep(path, "?", None, summary, (), (), text, (), False)
    node = _parsed(raw)
    if node is not None:
        block_names = [name for name, _ in node.blocks()]
    else:
        block_names = [name for name, value in raw.items() if _looks_like_nodes(value)]
    own = {key: value for key, value in raw.items() if key not in block_names}
    reads = [binding for _, binding in iter_paths(own)]
    writes: list[str] = []
    if node is not None:
        reads += [f"secrets.{name}" for _, name in node.secrets_read()]
        writes += [f"vars.{name}" for name in node.variables_set()]
        writes += [f"secrets.{name}" for _, name in node.secrets_written()]
    blocks = tuple(
        FlowBlock(name, tuple(action_flow(raw.get(name), f"{path}.{name}")))
        for name in block_names
        if raw.get(name)
    )
    node_type = str(raw.get("type", "?"))
    label = raw.get("label")
    return FlowStep(
        path=path,
        type=node_type,
        label=str(label) if label is not None else None,
        summary=summarize(node_type, own),
        reads=tuple(dict.fromkeys(reads)),
        writes=tuple(dict.fromkeys(writes)),
        fields=json.dumps(
            {k: v for k, v in own.items() if k not in ("type", "label")},
            indent=2,
            ensure_ascii=False,
        ),
        blocks=blocks,
        valid=node is not None,
    )


def _parsed(raw: dict[str, Any]) -> Any:
    """The node model, or None when this node (or one inside it) doesn't validate."""
    try:
        return ACTION_ADAPTER.validate_python([raw])[0]
    except ValidationError:
        return None


def _looks_like_nodes(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and "type" in item for item in value)
    )


def describe_condition(condition: Any) -> str:
    """A condition as a sentence: `vars.token has value`, `all of (…, …)`."""
    if not isinstance(condition, dict):
        return _operand(condition)
    if "op" in condition:
        op = str(condition["op"]).replace("_", " ")
        left = _operand(condition.get("left"))
        if condition["op"] == "has_value":
            return f"{left} has value"
        return f"{left} {op} {_operand(condition.get('right'))}"
    for group in ("all", "any"):
        if isinstance(condition.get(group), list):
            inner = ", ".join(describe_condition(item) for item in condition[group])
            return f"{group} of ({inner})"
    if "not" in condition:
        return f"not ({describe_condition(condition['not'])})"
    return json.dumps(condition, ensure_ascii=False)


def _operand(value: Any) -> str:
    """A binding reads as its path; anything else as JSON."""
    if isinstance(value, str):
        bindings = [binding for _, binding in iter_paths(value)]
        if len(bindings) == 1 and value.strip().startswith("{{") and value.strip().endswith("}}"):
            return bindings[0]
    return json.dumps(value, ensure_ascii=False)


def _mapping(fields: dict[str, Any], key: str) -> str:
    value = fields.get(key)
    return ", ".join(str(name) for name in value) if isinstance(value, dict) else ""


# What each node type's summary line says; a type without an entry is summarized by its type.
SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "update_object": lambda f: f"set {_mapping(f, 'values')}",
    "web_request": lambda f: (
        f"{f.get('method', 'GET')} {f.get('url', '')}"
        + (f" → {_mapping(f, 'result_mapping')}" if f.get("result_mapping") else "")
    ),
    "if": lambda f: f"if {describe_condition(f.get('condition'))}",
    "update_secret": lambda f: f"write secret {f.get('secret', '?')}",
    "try": lambda f: (
        "try" + (f", catching {', '.join(map(str, f['errors']))}" if f.get("errors") else "")
    ),
    "throw": lambda f: f"fail with {f.get('status', 400)}: {f.get('message', '')}",
    "end_execution": lambda f: (
        "end the run"
        + (
            f", answering {json.dumps(f['response'], ensure_ascii=False)}"
            if "response" in f
            else ""
        )
    ),
    "log": lambda f: f"log ({f.get('level', 'info')}): {f.get('message', '')}",
    "sign_jwt": lambda f: (
        f"sign a {f.get('algorithm', '?')} JWT with secret "
        f"{f.get('key_secret', '?')} into {f.get('into', '?')}"
    ),
}


def summarize(node_type: str, fields: dict[str, Any]) -> str:
    """One line saying what the node does, cut to a readable length."""
    describe = SUMMARIES.get(node_type)
    try:
        text = describe(fields) if describe else node_type
    except (TypeError, AttributeError):  # a malformed node as submitted
        text = node_type
    return text if len(text) <= _MAX_SUMMARY else f"{text[: _MAX_SUMMARY - 1]}…"
