"""Static analysis of an action: what it reads and writes, and whether it names only known things.

The runner uses it for the pre-flight check (every `update_secret` target, before any outbound
call); the services store uses it to refuse a bad action when it is saved. It asks each node (the
`ActionNode` methods), never which type a node is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import ActionInvalid
from app.pipeline.bindings import PathError, iter_paths, split_path
from app.pipeline.nodes.base import ActionNode
from app.pipeline.schemas import ACTION_ADAPTER, parse_action


def walk(nodes: Sequence[ActionNode], path: str = "action") -> Iterator[tuple[str, ActionNode]]:
    """Every node of an action, depth first, with its path (`action[2].then[0]`)."""
    for index, node in enumerate(nodes):
        node_path = f"{path}[{index}]"
        yield node_path, node
        for name, block in node.blocks():
            yield from walk(block, f"{node_path}.{name}")


def update_targets(nodes: Sequence[ActionNode]) -> list[tuple[str, str]]:
    """(node path, secret name) of every secret the action writes, whichever branch it sits in."""
    return [(path, name) for path, node in walk(nodes) for _, name in node.secrets_written()]


def binding_paths(
    nodes: Sequence[ActionNode], root: str = "action"
) -> Iterator[tuple[str, list[str]]]:
    """(node path + field, split binding path) of every binding in the action."""
    for path, node in walk(nodes, root):
        for where, raw in iter_paths(node.own_fields()):
            try:
                yield f"{path}{where}", split_path(raw)
            except PathError as exc:
                raise ActionInvalid(f"{path}{where}", str(exc)) from None


def referenced_secrets(nodes: Sequence[ActionNode]) -> set[str]:
    """Names of every secret the action reads (through a binding or named by a field, such as a
    signing key) or writes."""
    names = {segments[1] for _, segments in binding_paths(nodes) if segments[0] == "secrets"}
    for _, node in walk(nodes):
        names.update(name for _, name in node.secrets_read())
        names.update(name for _, name in node.secrets_written())
    return names


@dataclass(frozen=True)
class CompiledAction:
    """A stored action parsed, with what it reads and writes. Shared by every run of the same
    action text, so nothing may change it (runs keep their state in their `RunContext`)."""

    nodes: tuple[Any, ...]
    reads: frozenset[str]  # every secret it reads or writes
    targets: tuple[tuple[str, str], ...]  # (node path, secret) of every `update_secret`


_COMPILED: dict[str, CompiledAction] = {}
_COMPILED_MAX = 512


def compile_action(raw: list[dict[str, Any]]) -> CompiledAction:
    """The action as runs use it, parsed and analysed once per distinct text: parsing and the
    analysis cost more than a refresh's database work. Keyed by the exact JSON (key order kept:
    it is the order of form fields and headers), so an edited action is simply another key."""
    key = json.dumps(raw, separators=(",", ":"))
    compiled = _COMPILED.get(key)
    if compiled is None:
        nodes = parse_action(raw)
        compiled = CompiledAction(
            tuple(nodes), frozenset(referenced_secrets(nodes)), tuple(update_targets(nodes))
        )
        if len(_COMPILED) >= _COMPILED_MAX:
            del _COMPILED[next(iter(_COMPILED))]  # the oldest
        _COMPILED[key] = compiled
    return compiled


def assigned_variables(nodes: Sequence[ActionNode]) -> set[str]:
    """Variables some node of the action sets."""
    return {name for _, node in walk(nodes) for name in node.variables_set()}


def validate_action(
    raw_or_nodes: list[Any],
    *,
    declared_variables: set[str],
    known_secrets: set[str],
    prefix: str = "action",
) -> list[Any]:
    """Nodes of a valid action, or `ActionInvalid` naming the first offending node's path."""
    nodes = ACTION_ADAPTER.validate_python(raw_or_nodes)
    variables = declared_variables | assigned_variables(nodes)
    for path, segments in binding_paths(nodes, prefix):
        root = segments[0]
        if root == "vars" and segments[1] not in variables:
            raise ActionInvalid(
                path,
                f"unknown variable {segments[1]!r} (declare it in the service's variables "
                "or set it with update_object or result_mapping)",
            )
        if root == "secrets" and segments[1] not in known_secrets:
            raise ActionInvalid(path, f"unknown secret {segments[1]!r} (create it first)")
    for path, node in walk(nodes, prefix):
        for field, name in (*node.secrets_written(), *node.secrets_read()):
            if name not in known_secrets:
                raise ActionInvalid(f"{path}.{field}", f"unknown secret {name!r} (create it first)")
        node.check(path)
    return nodes
