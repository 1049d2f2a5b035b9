"""The `tokenfarm` command line: one typer app; each module adds its commands to it."""

from __future__ import annotations

import sys

from app.cli.core import cli

# Importing a module registers its commands (keep the list in the order of `--help`).
from app.cli import runs as _runs  # noqa: F401  isort: skip
from app.cli import config as _config  # noqa: F401  isort: skip
from app.cli import secrets as _secrets  # noqa: F401  isort: skip
from app.cli import keys as _keys  # noqa: F401  isort: skip

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the `tokenfarm` script."""
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
