"""A run's per-node trace as timeline rows, for the console's run page.

The trace (`GET /v1/runs/{id}`) is stored already redacted (app/runs/record.py runs it through the
run's `Redactor`), so the rows show its fields as they are: no value is looked up again here.
Entries carry a duration but no start time; they are appended when a node starts, so a node starts
when the previous sibling ended, and a nested node starts with its parent (`if` and `try` spend
next to nothing before their block). The bars' offsets are laid out that way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Fields the engine writes on every entry (app/pipeline/engine.py); the rest is what the node
# recorded, split into what it took in and what it produced.
_FRAME_FIELDS = frozenset({"path", "type", "label", "outcome", "duration_ms", "error"})
_INPUT_FIELDS = ("request", "claims", "header", "algorithm", "level", "message")
_OUTPUT_FIELDS = (
    "variables",
    "status",
    "mapped",
    "branch",
    "caught",
    "secret",
    "expires_at",
    "into",
)
_STEP = re.compile(r"\.?([A-Za-z_]+)\[(\d+)\]")


@dataclass(frozen=True)
class TimelineRow:
    """One node of a run as the timeline shows it."""

    path: str
    depth: int  # 0 for a top-level node, 1 inside an `if`'s branch, ...
    type: str
    label: str | None
    status: str  # `ok`, `failed`, `ended`, or `unfinished` (the run stopped inside it)
    duration_ms: float | None
    offset_ms: float
    offset_percent: float  # where the bar starts, of the whole run
    width_percent: float  # how long it is, of the whole run (at least a sliver)
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    error_type: str | None
    error_message: str | None
    attempts: int | None  # a web request's attempts (retries + 1)


def _depth(path: str) -> int:
    return max(len(_STEP.findall(path)) - 1, 0)


def _parent(path: str) -> str | None:
    """`action[1].then[0]` -> `action[1]`; a top-level node has none."""
    cut = path.rfind(".")
    return path[:cut] if cut > 0 and _depth(path) > 0 else None


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def timeline(
    trace: Sequence[Mapping[str, Any]], run_duration_ms: float | None = None
) -> list[TimelineRow]:
    """The rows of a trace, in the order the nodes started, with bar offsets."""
    starts: dict[str, float] = {}
    cursors: dict[str, float] = {}  # where the next node of each block starts ("" is the top)
    laid_out: list[tuple[Mapping[str, Any], float]] = []
    for entry in trace:
        path = str(entry.get("path", ""))
        parent = _parent(path)
        block = parent or ""
        if block in cursors:
            begin = cursors[block]
        else:
            begin = starts.get(parent, 0.0) if parent else 0.0
        starts[path] = begin
        duration = entry.get("duration_ms")
        cursors[block] = begin + (float(duration) if isinstance(duration, (int, float)) else 0.0)
        laid_out.append((entry, begin))
    latest_end = max(
        (start + float(entry.get("duration_ms") or 0) for entry, start in laid_out),
        default=0.0,
    )
    total = max(run_duration_ms or 0.0, latest_end, 0.001)
    return [_row(entry, start, total) for entry, start in laid_out]


def _row(entry: Mapping[str, Any], start: float, total: float) -> TimelineRow:
    duration = entry.get("duration_ms")
    duration_ms = float(duration) if isinstance(duration, (int, float)) else None
    error = entry.get("error") if isinstance(entry.get("error"), Mapping) else None
    retries = entry.get("retries")
    path = str(entry.get("path", ""))
    return TimelineRow(
        path=path,
        depth=_depth(path),
        type=str(entry.get("type", "?")),
        label=str(entry["label"]) if entry.get("label") is not None else None,
        status=str(entry.get("outcome") or "unfinished"),
        duration_ms=duration_ms,
        offset_ms=round(start, 2),
        offset_percent=round(min(start / total * 100, 100.0), 2),
        width_percent=round(max(min((duration_ms or 0) / total * 100, 100.0), 0.5), 2),
        inputs=_fields(entry, _INPUT_FIELDS),
        outputs=_fields(entry, _OUTPUT_FIELDS) + _others(entry),
        error_type=str(error["type"]) if error and error.get("type") else None,
        error_message=str(error["message"]) if error and error.get("message") else None,
        attempts=int(retries) + 1
        if isinstance(retries, int)
        else (1 if entry.get("type") == "web_request" and "status" in entry else None),
    )


def _fields(entry: Mapping[str, Any], names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    return tuple((name, _shown(entry[name])) for name in names if name in entry)


def _others(entry: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Whatever else a node recorded (a node type added later), shown rather than dropped."""
    known = _FRAME_FIELDS | set(_INPUT_FIELDS) | set(_OUTPUT_FIELDS) | {"retries"}
    return tuple((name, _shown(value)) for name, value in entry.items() if name not in known)
