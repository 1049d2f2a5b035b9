"""Reading a configuration document: YAML with line numbers, validated as a whole.

The YAML is composed into nodes first, so every problem — a schema error from pydantic, a
reference to something that doesn't exist — can be reported as `FILE:LINE: path.to.field: what
to fix`. Messages never quote the document's text beyond key names: a misplaced secret must not
end up in a CI log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from app.configuration.document import Document
from app.errors import InvalidInput
from app.schemas import UNION_TAGS, describe_error, format_location

MAX_DOCUMENT_BYTES = 1024 * 1024
# Aliases share nodes, so a small file can expand into a huge document ("billion laughs").
MAX_EXPANDED_NODES = 200_000
# Composing, checking and validating recurse once per level: a real document is a few levels
# deep, and 2,000 levels of `[[[…` would exhaust Python's stack (a RecursionError).
MAX_DEPTH = 100
PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document: where (file, line, field path) and what to fix."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        """The problem as the API lists it."""
        return {"path": self.path, "message": self.message, "file": self.file, "line": self.line}


class DocumentInvalid(InvalidInput):
    """The document can't be applied; `problems` lists every reason, nothing was changed."""

    error_type = "invalid_document"

    def __init__(self, problems: list[Problem]) -> None:
        first = str(problems[0])
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{first}{more}", errors=[p.as_dict() for p in problems])
        self.problems = problems


def split_path(path: str) -> tuple[str | int, ...]:
    """`services[0].endpoints[1].action` -> `("services", 0, "endpoints", 1, "action")`."""
    return tuple(int(index) if index else name for name, index in PATH_PART.findall(path))


@dataclass
class LoadedDocument:
    """A validated document with the YAML nodes it came from, to point at lines."""

    document: Document
    file: str
    root: Node | None
    problems: list[Problem] = field(default_factory=list)

    def line(self, path: str | tuple[Any, ...]) -> int | None:
        """The line of the deepest node the path reaches (1-based)."""
        return line_of(self.root, split_path(path) if isinstance(path, str) else path)

    def problem(self, path: str, message: str) -> None:
        """Note a problem at `path` (raised together by `check`)."""
        self.problems.append(Problem(self.file, self.line(path), path, message))

    def check(self) -> None:
        """Raise every problem noted so far, if there is one."""
        if self.problems:
            raise DocumentInvalid(sorted(self.problems, key=lambda p: (p.line or 0, p.path)))


def line_of(root: Node | None, loc: tuple[Any, ...]) -> int | None:
    """The line of the node at `loc` (a key's own line for mappings); where it stops existing,
    the line of the last node found (a missing field is reported at its parent)."""
    if root is None:
        return None
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.value == str(part):
                    node, line = value, key.start_mark.line + 1
                    break
            else:
                if part in UNION_TAGS:
                    continue  # the tag pydantic adds for a discriminated union
                break
        elif isinstance(node, SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _expanded_size(node: Node, sizes: dict[int, int]) -> int:
    """How many nodes the document has once its aliases are expanded (memoized per node)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a recursive alias counts once instead of looping
    if isinstance(node, SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, MappingNode):
        size = 1 + sum(
            _expanded_size(key, sizes) + _expanded_size(value, sizes) for key, value in node.value
        )
    else:
        size = 1
    sizes[id(node)] = min(size, MAX_EXPANDED_NODES + 1)
    return sizes[id(node)]


def _duplicate_keys(node: Node, file: str, path: str, seen: set[int]) -> list[Problem]:
    """Keys given twice in one mapping (YAML would silently keep the last)."""
    if id(node) in seen:
        return []
    seen.add(id(node))
    found: list[Problem] = []
    if isinstance(node, MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, ScalarNode) else "?"
            child = f"{path}.{name}" if path else name
            if name in lines:
                found.append(
                    Problem(
                        file,
                        key.start_mark.line + 1,
                        child,
                        f"given twice (first on line {lines[name]})",
                    )
                )
            else:
                lines[name] = key.start_mark.line + 1
            found.extend(_duplicate_keys(value, file, child, seen))
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            found.extend(_duplicate_keys(item, file, f"{path}[{index}]", seen))
    return found


class _TooDeep(Exception):
    """The document nests deeper than `MAX_DEPTH`; carries where it went too deep."""

    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses to compose nodes nested deeper than `MAX_DEPTH`."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


def compose(text: str, file: str) -> tuple[Any, Node | None]:
    """The YAML's data and its root node, or `DocumentInvalid` saying where the syntax breaks."""
    if len(text.encode("utf-8", errors="replace")) > MAX_DOCUMENT_BYTES:
        raise DocumentInvalid(
            [Problem(file, None, "", f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")]
        )
    try:
        loader = _BoundedLoader(text)
    except yaml.reader.ReaderError as exc:
        where = text[: exc.position].count("\n") + 1
        problem = f"not valid YAML: character U+{exc.character:04X} is not allowed"
        raise DocumentInvalid([Problem(file, where, "", problem)]) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        if _expanded_size(root, {}) > MAX_EXPANDED_NODES:
            raise DocumentInvalid(
                [Problem(file, None, "", "the document is too large once its aliases expand")]
            )
        duplicates = _duplicate_keys(root, file, "", set())
        if duplicates:
            raise DocumentInvalid(duplicates)
        return loader.construct_document(root), root
    except yaml.MarkedYAMLError as exc:
        # Only the parser's own words: its snippet of the line could quote a value.
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        raise DocumentInvalid([Problem(file, line, "", f"not valid YAML: {what}")]) from None
    except _TooDeep as exc:
        problem = f"the document nests deeper than {MAX_DEPTH} levels"
        raise DocumentInvalid([Problem(file, exc.line, "", problem)]) from None
    except yaml.YAMLError:  # a ReaderError past the first buffer, or any other
        raise DocumentInvalid([Problem(file, None, "", "not valid YAML")]) from None
    finally:
        loader.dispose()


def load(text: str, file: str) -> LoadedDocument:
    """Parse and validate a document's shape (no database involved), naming every problem."""
    data, root = compose(text, file)
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}"
        raise DocumentInvalid(
            [
                Problem(
                    file,
                    1 if root is None else root.start_mark.line + 1,
                    "",
                    f"the document is {what}; it must be a mapping that starts with 'version: 1'",
                )
            ]
        )
    try:
        document = Document.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            problems.append(
                Problem(
                    file,
                    line_of(root, loc),
                    # A leading "body" is all format_location strips: a key named "query" stays.
                    format_location(("body", *loc)),
                    describe_error(dict(error)),
                )
            )
        raise DocumentInvalid(sorted(problems, key=lambda p: (p.line or 0, p.path))) from None
    return LoadedDocument(document=document, file=file, root=root)
