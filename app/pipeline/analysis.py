"""Static analysis of an action: what it reads and writes, and whether it names only known things.

The runner uses it for the pre-flight check (every `update_secret` target, before any outbound
call); the services store uses it to refuse a bad action when it is saved.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.errors import ActionInvalid
from app.pipeline.bindings import BINDING, PathError, iter_paths, split_path
from app.pipeline.nodes import compile_jsonpath
from app.pipeline.schemas import (
    ACTION_ADAPTER,
    IfNode,
    SignJwtNode,
    TryNode,
    UpdateObjectNode,
    UpdateSecretNode,
    WebRequestNode,
    parse_action,
)


def walk(nodes: list[Any], path: str = "action") -> Iterator[tuple[str, Any]]:
    """Every node of an action, depth first, with its path (`action[2].then[0]`)."""
    for index, node in enumerate(nodes):
        node_path = f"{path}[{index}]"
        yield node_path, node
        if isinstance(node, IfNode):
            yield from walk(node.then, f"{node_path}.then")
            yield from walk(node.else_, f"{node_path}.else")
        elif isinstance(node, TryNode):
            yield from walk(node.do, f"{node_path}.do")
            yield from walk(node.catch, f"{node_path}.catch")


def _own_fields(node: Any) -> dict[str, Any]:
    """A node's fields as JSON, without nested node lists (those are walked on their own)."""
    dumped = node.model_dump(by_alias=True, mode="json", exclude_none=True)
    for nested in ("then", "else", "do", "catch"):
        dumped.pop(nested, None)
    return dumped


def update_targets(nodes: list[Any]) -> list[tuple[str, str]]:
    """(node path, secret name) of every `update_secret`, whichever branch it sits in."""
    return [(path, node.secret) for path, node in walk(nodes) if isinstance(node, UpdateSecretNode)]


def binding_paths(nodes: list[Any], root: str = "action") -> Iterator[tuple[str, list[str]]]:
    """(node path + field, split binding path) of every binding in the action."""
    for path, node in walk(nodes, root):
        for where, raw in iter_paths(_own_fields(node)):
            try:
                yield f"{path}{where}", split_path(raw)
            except PathError as exc:
                raise ActionInvalid(f"{path}{where}", str(exc)) from None


def signing_keys(nodes: list[Any]) -> list[tuple[str, str]]:
    """(node path, secret name) of every `sign_jwt` key."""
    return [(path, node.key_secret) for path, node in walk(nodes) if isinstance(node, SignJwtNode)]


def referenced_secrets(nodes: list[Any]) -> set[str]:
    """Names of every secret the action reads (through a binding or as a signing key) or writes."""
    names = {segments[1] for _, segments in binding_paths(nodes) if segments[0] == "secrets"}
    names |= {name for _, name in signing_keys(nodes)}
    return names | {name for _, name in update_targets(nodes)}


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


def assigned_variables(nodes: list[Any]) -> set[str]:
    """Variables some node of the action sets."""
    names: set[str] = set()
    for _, node in walk(nodes):
        if isinstance(node, UpdateObjectNode):
            names.update(node.values)
        elif isinstance(node, WebRequestNode):
            names.update(node.result_mapping)
        elif isinstance(node, SignJwtNode):
            names.add(node.into)
    return names


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
        if isinstance(node, UpdateSecretNode) and node.secret not in known_secrets:
            raise ActionInvalid(
                f"{path}.secret", f"unknown secret {node.secret!r} (create it first)"
            )
        if isinstance(node, SignJwtNode) and node.key_secret not in known_secrets:
            raise ActionInvalid(
                f"{path}.key_secret", f"unknown secret {node.key_secret!r} (create it first)"
            )
        if isinstance(node, WebRequestNode):
            for variable, expression in node.result_mapping.items():
                try:
                    compile_jsonpath(expression)
                except ValueError as exc:
                    raise ActionInvalid(f"{path}.result_mapping.{variable}", str(exc)) from None
            if not _plausible_url(node.url):
                raise ActionInvalid(f"{path}.url", "must be an absolute http:// or https:// URL")
    return nodes


def _plausible_url(url: str) -> bool:
    """Whether a URL can be http(s); one with bindings is checked again when it is rendered."""
    if BINDING.search(url):
        return url.lower().startswith(("http://", "https://", "{{"))
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False
