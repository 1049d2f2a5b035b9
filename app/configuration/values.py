"""Where `value_from` reads: the applying process's environment and files, or a request's `env`.

A value read here goes to the secret store and nowhere else: problems name the variable or the
file, never what it holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.configuration.document import ValueFrom
from app.schemas import all_finite
from app.secrets.schemas import value_size_problem

MAX_FILE_BYTES = 1024 * 1024


class ValueUnavailable(Exception):
    """A value can't be read; the message says which variable or file and why."""


@dataclass(frozen=True)
class ValueSource:
    """Resolves `value_from`: `env` from `env`, `file` under `base_dir` (None: files refused)."""

    env: Mapping[str, str]
    base_dir: Path | None
    # How the API names its env, so a missing key is explained in the caller's terms.
    env_label: str = "the environment variable"
    file_refusal: str = ""

    def read(self, spec: ValueFrom) -> Any:
        """The value `spec` points at, or `ValueUnavailable`."""
        if spec.env is not None:
            text = self.env.get(spec.env)
            if text is None:
                raise ValueUnavailable(f"{self.env_label} {spec.env} is not set")
            if text == "":
                raise ValueUnavailable(f"{self.env_label} {spec.env} is empty")
            return _parse(text, spec.format, f"{self.env_label} {spec.env}")
        assert spec.file is not None
        if self.base_dir is None:
            raise ValueUnavailable(self.file_refusal or "files can't be read here")
        path = self.base_dir / spec.file
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ValueUnavailable(
                f"file {spec.file!r} can't be read ({exc.strerror or type(exc).__name__}; "
                f"paths are relative to the document's directory)"
            ) from None
        if len(raw) > MAX_FILE_BYTES:
            raise ValueUnavailable(f"file {spec.file!r} is larger than {MAX_FILE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueUnavailable(f"file {spec.file!r} is not UTF-8 text") from None
        # `echo token > file` adds a newline that is not part of the token.
        text = text.removesuffix("\n").removesuffix("\r")
        if text == "":
            raise ValueUnavailable(f"file {spec.file!r} is empty")
        return _parse(text, spec.format, f"file {spec.file!r}")


def _parse(text: str, value_format: str, what: str) -> Any:
    """The text itself, or for `format: json` the JSON it holds (never quoted in an error)."""
    value = _parsed(text, value_format, what)
    problem = value_size_problem(value)
    if problem is not None:
        raise ValueUnavailable(f"{what}: {problem}")
    return value


def _parsed(text: str, value_format: str, what: str) -> Any:
    if value_format == "text":
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueUnavailable(
            f"{what} is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    except ValueError:
        raise ValueUnavailable(f"{what} is not valid JSON") from None
    if value is None or not all_finite(value):
        raise ValueUnavailable(f"{what} holds null, NaN or Infinity, which no secret can hold")
    return value
