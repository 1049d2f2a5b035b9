"""Static analysis of an action: what it reads and writes, whether it names only known things,
and where its secrets' values can go.

The runner uses it for the pre-flight check (every `update_secret` target, before any outbound
call); the services store and the preset binder use it to refuse a bad action when it is saved,
and to tell which permissions its author needs (`ensure_author_may_save`). It asks each node (the
`ActionNode` methods, `flows` above all), never which type a node is.

Where values go (docs/action-language.md, "What an action may do with a secret"): every value has
an `Origin`, the secrets it is made from and whether the outside (the caller's request, an
upstream's answer, a caught error) had a hand in it; variables get theirs from every flow into
them, whatever the branch, until nothing changes. A value made from a secret never goes to an
output (a response, a throw or log message, an expiry), is never compared with what the outside
controls (an oracle), and is stored in another secret only by an author who may read it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from app.auth.permissions import secret_read, secret_use
from app.errors import ActionInvalid, PermissionDenied
from app.pipeline.bindings import PathError, iter_paths, split_path
from app.pipeline.nodes.base import ActionNode
from app.pipeline.schemas import ACTION_ADAPTER, parse_action

if TYPE_CHECKING:
    from app.auth.actor import Actor

# Binding roots whose values the outside controls: the caller, or an upstream (whose server the
# action's author may run), or a caught error (which quotes upstreams).
OUTSIDE_ROOTS = frozenset({"request", "response", "error"})


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
    check_flows(nodes, prefix)
    return nodes


@dataclass(frozen=True)
class Origin:
    """What a value is made from, as far as the secrets' rules care."""

    secrets: frozenset[str] = frozenset()
    outside: bool = False  # the caller's request, an upstream's answer or a caught error

    def __or__(self, other: Origin) -> Origin:
        return Origin(self.secrets | other.secrets, self.outside or other.outside)


NOTHING = Origin()


def origin_of(value: Any, variables: Mapping[str, Origin]) -> Origin:
    """The origin of a (nested) action value: that of every binding in it."""
    secrets: set[str] = set()
    outside = False
    for _, raw in iter_paths(value):
        try:
            segments = split_path(raw)
        except PathError:
            continue  # `binding_paths` refuses it, with its path
        root = segments[0]
        if root == "secrets":
            secrets.add(segments[1])
        elif root in OUTSIDE_ROOTS:
            outside = True
        elif root == "vars":
            known = variables.get(segments[1], NOTHING)
            secrets |= known.secrets
            outside = outside or known.outside
    return Origin(frozenset(secrets), outside)


def variable_origins(nodes: Sequence[ActionNode]) -> dict[str, Origin]:
    """Each variable's origin: everything any node may set it from, in any branch or order (a
    declared default is a constant the author wrote)."""
    flows = [
        flow
        for _, node in walk(nodes)
        for flow in node.flows()
        if flow.kind == "variable" and flow.target is not None
    ]
    origins: dict[str, Origin] = {}
    changed = True
    while changed:  # origins only grow, and there are finitely many: this ends
        changed = False
        for flow in flows:
            assert flow.target is not None
            before = origins.get(flow.target, NOTHING)
            after = before | origin_of(flow.value, origins)
            if after != before:
                origins[flow.target] = after
                changed = True
    return origins


def _secrets_named(names: frozenset[str]) -> str:
    ordered = sorted(names)
    if len(ordered) == 1:
        return f"secret {ordered[0]!r}"
    return "secrets " + ", ".join(repr(name) for name in ordered)


def check_flows(nodes: Sequence[ActionNode], prefix: str = "action") -> None:
    """Refuse, with `ActionInvalid` at the node's field, an action that would show a secret
    (in a response, a throw or log message, an expiry) or compare one with what the outside
    controls. Comparing a secret with a constant the author wrote is allowed: an oracle needs
    questions the asker can change from one run to the next."""
    origins = variable_origins(nodes)
    for path, node in walk(nodes, prefix):
        for flow in node.flows():
            origin = origin_of(flow.value, origins)
            if not origin.secrets:
                continue
            where = f"{path}{flow.field}"
            if flow.kind == "output":
                raise ActionInvalid(
                    where,
                    f"this would show {_secrets_named(origin.secrets)} (or a value made from it): "
                    "no response, throw or log message, or expiry may carry a secret's value; "
                    "reading a value is GET /v1/secrets/{name}/value with secrets.read:NAME",
                )
            if flow.kind == "condition" and origin.outside:
                raise ActionInvalid(
                    where,
                    f"'{flow.target}' puts {_secrets_named(origin.secrets)} against what the "
                    "caller or an upstream controls (request, response, error or a variable set "
                    "from them): each run would answer a question about the secret, an oracle; "
                    "compare it with a constant, or test it alone with has_value",
                )


class Need(NamedTuple):
    """A permission the author of an action needs, where in the action, and why."""

    path: str
    permission: str
    reason: str


def author_needs(nodes: Sequence[ActionNode], prefix: str = "action") -> list[Need]:
    """What saving the action needs of its author, in the order of the action: `secrets.use`
    of every secret it reads (not of those it only writes: running needs
    `secrets.update_from_service` for those), and `secrets.read` of every secret a value stored
    in another secret is made from."""
    needs = [
        Need(path, secret_use(segments[1]), f"it uses secret {segments[1]!r}")
        for path, segments in binding_paths(nodes, prefix)
        if segments[0] == "secrets"
    ]
    origins = variable_origins(nodes)
    for path, node in walk(nodes, prefix):
        for field, name in node.secrets_read():
            needs.append(Need(f"{path}.{field}", secret_use(name), f"it uses secret {name!r}"))
        for flow in node.flows():
            if flow.kind != "secret":
                continue
            for source in sorted(origin_of(flow.value, origins).secrets - {flow.target}):
                needs.append(
                    Need(
                        f"{path}{flow.field}",
                        secret_read(source),
                        f"it stores a value made from secret {source!r} in secret "
                        f"{flow.target!r}, which would let whoever reads {flow.target!r} read it",
                    )
                )
    return needs


def ensure_author_may_save(author: Actor, nodes: Sequence[ActionNode], prefix: str) -> None:
    """Refuse (403 naming the node path and the permission) unless `author` may save the action.
    Runs check nothing of this: an action saved by someone allowed runs for anyone who may run
    its endpoint."""
    missing: dict[str, Need] = {}
    for need in author_needs(nodes, prefix):
        if need.permission not in missing and not author.can(need.permission):
            missing[need.permission] = need
    if missing:
        first = next(iter(missing.values()))
        raise PermissionDenied(
            f"{first.path}: saving this action needs the permission {first.permission!r} "
            f"({first.reason})",
            permission=first.permission,
            path=first.path,
            errors=[{"path": n.path, "permission": n.permission} for n in missing.values()],
        )
