"""Bindings: `{{ path }}` in action strings, resolved against a run's state; never run as code.

A string that is exactly one binding yields the raw value (number, null, object); any other string
is interpolated as text. Paths are dotted names with optional numeric list indexes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

BINDING = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")

ROOTS = {
    "vars": "a service variable: vars.NAME",
    "secrets": "a secret: secrets.NAME or secrets.NAME.field",
    "request": "the caller's request: request.query.X, request.body.X, request.headers.X",
    "response": "the last web request: response.status, response.headers.X, response.body.X",
    "run": "the run: run.id",
    "now": "the current time in epoch seconds",
    "error": "the caught error inside a try's catch: error.type, error.kind, error.message",
}
REQUEST_PARTS = ("query", "body", "headers")
RESPONSE_PARTS = ("status", "headers", "body")
# Roots that hold a fixed set of plain fields: `run.id`, `error.type`; nothing deeper.
FIXED_FIELDS: dict[str, tuple[str, ...]] = {"run": ("id",), "error": ("type", "kind", "message")}


class PathError(ValueError):
    """A binding path that doesn't follow the grammar; the message says what is allowed."""


def split_path(path: str) -> list[str]:
    """`secrets.SA_KEY.private_key` -> ["secrets", "SA_KEY", "private_key"], checked."""
    segments = path.split(".")
    if not path or any(not SEGMENT.match(s) for s in segments):
        raise PathError(f"'{{{{ {path} }}}}' is not a binding path (dotted names like vars.token)")
    root = segments[0]
    if root not in ROOTS:
        known = ", ".join(ROOTS)
        raise PathError(f"'{{{{ {path} }}}}' starts with unknown root {root!r} (known: {known})")
    if root == "now" and len(segments) != 1:
        raise PathError("'now' takes no further path")
    if root in ("vars", "secrets", "run", "error") and len(segments) < 2:
        raise PathError(f"'{{{{ {path} }}}}' needs a name: {ROOTS[root]}")
    if root == "request" and (len(segments) < 2 or segments[1] not in REQUEST_PARTS):
        raise PathError(f"'{{{{ {path} }}}}': {ROOTS['request']}")
    if root == "response" and (len(segments) < 2 or segments[1] not in RESPONSE_PARTS):
        raise PathError(f"'{{{{ {path} }}}}': {ROOTS['response']}")
    if root == "response" and segments[1] == "status" and len(segments) > 2:
        raise PathError("'response.status' takes no further path")
    if root in FIXED_FIELDS:
        if segments[1] not in FIXED_FIELDS[root] or len(segments) > 2:
            raise PathError(f"'{{{{ {path} }}}}': {ROOTS[root]}")
    return segments


def iter_paths(value: Any) -> Iterator[tuple[str, str]]:
    """Every binding path in a (nested) action value, with the field path it was found at."""
    if isinstance(value, str):
        for match in BINDING.finditer(value):
            yield "", match.group(1)
    elif isinstance(value, dict):
        for key, item in value.items():
            for where, path in iter_paths(item):
                yield f".{key}{where}", path
    elif isinstance(value, list):
        for index, item in enumerate(value):
            for where, path in iter_paths(item):
                yield f"[{index}]{where}", path


def dig(value: Any, segments: list[str]) -> Any:
    """Walk into dicts and lists; a JSON string is parsed on the way; a missing step gives None."""
    for segment in segments:
        if isinstance(value, str) and value[:1] in ("{", "["):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if isinstance(value, dict):
            value = value.get(segment)
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            return None
    return value


def as_text(value: Any) -> str:
    """How a value reads when interpolated into a longer string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def render(value: Any, resolve: Callable[[list[str]], Any]) -> Any:
    """Replace every binding in a (nested) value; `resolve` looks up one split path."""
    if isinstance(value, str):
        whole = BINDING.fullmatch(value.strip()) if "{{" in value else None
        if whole:
            return resolve(split_path(whole.group(1)))
        if "{{" not in value:
            return value
        return BINDING.sub(lambda m: as_text(resolve(split_path(m.group(1)))), value)
    if isinstance(value, dict):
        return {key: render(item, resolve) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, resolve) for item in value]
    return value
