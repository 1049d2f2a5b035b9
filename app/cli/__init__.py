"""The `tokenfarm` command line: a group that imports a command's module only when it runs.

`tokenfarm --help` and `tokenfarm --version` import none of the command modules (and so neither
SQLAlchemy, httpx nor FastAPI): the listing reads the names and one-line helps of `COMMANDS`.
Running a command, or asking for its own `--help`, imports its module, whose `commands` typer
app holds the real thing. tests/cli/test_startup.py checks that the listing says what the modules
say and that `--help` stays light.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import import_module
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class LazyCommand:
    """Where a top-level command lives, and the line `tokenfarm --help` shows for it."""

    module: str
    help: str


# In the order of `tokenfarm --help`.
COMMANDS: dict[str, LazyCommand] = {
    "migrate": LazyCommand("app.cli.core", "Upgrade the database schema to the newest migration."),
    "init": LazyCommand(
        "app.cli.core",
        "Migrate the database and create the owner account (running it again changes nothing).",
    ),
    "keygen": LazyCommand(
        "app.cli.core", "Print a new encryption key for TOKENFARM_ENCRYPTION_KEYS."
    ),
    "serve": LazyCommand("app.cli.core", "Serve the API (and the explorer at /docs)."),
    "scheduler": LazyCommand(
        "app.cli.core",
        "Run only the scheduler (schedules and expiry-driven refresh), until SIGTERM or Ctrl-C.",
    ),
    "demo": LazyCommand(
        "app.cli.core",
        "Start tokenfarm on SQLite with a bundled token server, configured by examples/demo.yaml.",
    ),
    "run": LazyCommand(
        "app.cli.runs",
        "Run an endpoint now, in this process, as the system; exit 1 when the run fails.",
    ),
    "refresh": LazyCommand(
        "app.cli.runs",
        "Run the secret's refresh endpoint now, in this process; exit 1 when the run fails.",
    ),
    "apply": LazyCommand(
        "app.cli.config",
        "Apply a configuration document: create, update (and with --prune delete) to match it.",
    ),
    "export": LazyCommand(
        "app.cli.config",
        "Print the live configuration as a document `apply` takes (values never included).",
    ),
    "rotate-keys": LazyCommand(
        "app.cli.keys",
        "Re-encrypt everything stored with the first key of TOKENFARM_ENCRYPTION_KEYS.",
    ),
    "service-accounts": LazyCommand("app.cli.core", "Service accounts, for scripts and CI."),
    "api-keys": LazyCommand("app.cli.core", "API keys of service accounts."),
    "runs": LazyCommand(
        "app.cli.runs",
        "The run log (newest last; --follow for new runs), and recovering runs whose answer was "
        "not stored.",
    ),
    "secrets": LazyCommand(
        "app.cli.secrets", "Secrets: metadata, values set by hand, history and rollback."
    ),
    "connect": LazyCommand(
        "app.cli.connect",
        "Connect a secret to its provider (a link to open, or --device: a code), via the server.",
    ),
}


def load_command(name: str) -> Any:
    """The real (click) command `name`, from the `commands` typer app of its module."""
    module = import_module(COMMANDS[name].module)
    return typer.main.get_group(module.commands).commands[name]


class LazyGroup(TyperGroup):
    """The top-level group: lists `COMMANDS` without importing them, loads one when it runs."""

    # Contexts and commands are typed Any: typer vendors click in newer releases, not in older.

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._listing = False
        self._loaded: dict[str, Any] = {}

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if self._listing:
            # The help listing reads only a name and a line: a stand-in spares the import.
            return TyperCommand(cmd_name, help=COMMANDS[cmd_name].help)
        if cmd_name not in self._loaded:
            self._loaded[cmd_name] = load_command(cmd_name)
        return self._loaded[cmd_name]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"tokenfarm {version('tokenfarm')}")
        raise typer.Exit()


cli = typer.Typer(
    cls=LazyGroup,
    help="tokenfarm: keeps OAuth access tokens and other short-lived secrets fresh.",
    no_args_is_help=True,
)


@cli.callback()
def _tokenfarm(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    # Options of `tokenfarm` itself; the commands are in COMMANDS.
    pass


__all__ = ["COMMANDS", "cli", "main"]


def main() -> None:
    """Entry point of the `tokenfarm` script."""
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
