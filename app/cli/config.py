"""`tokenfarm apply` and `tokenfarm export`: config as code, straight on the database.

`apply` acts as the system itself (every permission), reads `value_from` from this process's
environment and from files next to the document, and changes everything in one transaction.
Exit codes scripts can trust: 0 applied (or nothing to change, or a dry run that would succeed);
1 the document is invalid; 2 the apply failed (a store refused a change, the database failed).
Nothing is changed unless the exit code is 0.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import SQLAlchemyError

from app.cli.console import database_problem
from app.cli.core import SYSTEM_ACTOR
from app.config import Settings, get_settings
from app.configuration.apply import apply_document
from app.configuration.export import export_document, render
from app.configuration.loader import DocumentInvalid, LoadedDocument, load
from app.configuration.plan import Change, Plan
from app.configuration.values import ValueSource
from app.crypto import Keyring, load_keyring
from app.db import create_engine, session_factory
from app.errors import TokenfarmError

# The commands of this module; app/cli/__init__.py lists them and loads them when they run.
commands = typer.Typer()

EXIT_INVALID = 1
EXIT_FAILED = 2
MARKS = {
    "create": ("+", "green"),
    "update": ("~", "yellow"),
    "delete": ("-", "red"),
    "unchanged": ("=", "dim"),
}
LABELS = {
    "role": "role",
    "service_account": "service account",
    "secret": "secret",
    "service": "service",
    "schedule": "schedule",
    "provider": "provider",
}


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _stop(message: str, code: int) -> NoReturn:
    _err().print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _read_document(file: str) -> tuple[str, Path]:
    """The document's text and the directory its `file:` paths are relative to."""
    if file == "-":
        return sys.stdin.read(), Path.cwd()
    path = Path(file)
    try:
        return path.read_text(encoding="utf-8"), path.resolve().parent
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        _stop(f"{file} can't be read ({why}); nothing was changed", EXIT_INVALID)


def _settings() -> tuple[Settings, Keyring]:
    try:
        settings = get_settings()
        return settings, load_keyring(settings)
    except TokenfarmError as exc:
        _stop(exc.message, EXIT_FAILED)
    except ValidationError as exc:
        _stop("; ".join(str(e["msg"]) for e in exc.errors()), EXIT_FAILED)


async def apply_file(
    settings: Settings,
    keyring: Keyring,
    loaded: LoadedDocument,
    values: ValueSource,
    *,
    dry_run: bool,
    prune: bool,
) -> Plan:
    """Apply a loaded document as the system in one transaction (rolled back for a dry run)."""
    engine = create_engine(settings.resolved_database_url)
    try:
        async with session_factory(engine)() as session:
            try:
                plan = await apply_document(
                    session,
                    keyring,
                    settings,
                    loaded,
                    actor=SYSTEM_ACTOR,
                    values=values,
                    prune=prune,
                )
                if dry_run:
                    await session.rollback()
                else:
                    await session.commit()
                return plan
            except BaseException:
                await session.rollback()
                raise
    finally:
        await engine.dispose()


def _change_line(change: Change) -> str:
    mark, style = MARKS[change.action]
    what = f"{LABELS[change.kind]} {change.name}"
    fields = f" ({', '.join(change.fields)})" if change.fields and change.action == "update" else ""
    if change.action == "create" and change.fields:
        fields = " (with a value)"
    return f"[{style}]{mark} {change.action:<9} {escape(what)}{escape(fields)}[/{style}]"


def print_plan(plan: Plan, *, dry_run: bool, show_unchanged: bool, out: Console) -> None:
    """The plan as coloured diff lines, its warnings, and what happened."""
    for change in plan.changes:
        if change.action != "unchanged" or show_unchanged:
            out.print(_change_line(change))
    for warning in plan.warnings:
        out.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if not plan.changed:
        out.print(f"No changes ({plan.count('unchanged')} unchanged).")
    elif dry_run:
        out.print(f"Dry run, nothing was changed: {plan.summary()}.")
    else:
        out.print(f"Applied: {plan.outcome()}.")


@commands.command("apply")
def apply_command(
    file: Annotated[
        str,
        typer.Option(
            "-f",
            "--file",
            help="The configuration document (YAML); `-` reads it from stdin.",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan and check it; change nothing.")
    ] = False,
    prune: Annotated[
        bool,
        typer.Option("--prune", help="Delete what the document's sections no longer name."),
    ] = False,
    show_unchanged: Annotated[
        bool, typer.Option("--show-unchanged", help="List unchanged objects too.")
    ] = False,
) -> None:
    """Apply a configuration document: create, update (and with --prune delete) to match it.

    Exit codes: 0 applied or nothing to change; 1 the document is invalid; 2 the apply failed.
    Nothing is changed unless the exit code is 0 (one transaction).
    """
    text, base_dir = _read_document(file)
    label = "<stdin>" if file == "-" else file
    try:
        loaded = load(text, label)
    except DocumentInvalid as exc:
        _invalid(exc)
    settings, keyring = _settings()
    values = ValueSource(env=dict(os.environ), base_dir=base_dir)
    try:
        plan = asyncio.run(
            apply_file(settings, keyring, loaded, values, dry_run=dry_run, prune=prune)
        )
    except DocumentInvalid as exc:
        _invalid(exc)
    except TokenfarmError as exc:
        _stop(f"{exc.message}; nothing was changed", EXIT_FAILED)
    except SQLAlchemyError as exc:
        _stop(f"{database_problem(exc)}; nothing was changed", EXIT_FAILED)
    except OSError as exc:
        _stop(f"{_unreachable(exc)}; nothing was changed", EXIT_FAILED)
    print_plan(plan, dry_run=dry_run, show_unchanged=show_unchanged, out=_out())


def _unreachable(exc: OSError) -> str:
    """A database that can't be reached at all (the driver raises before SQLAlchemy wraps it)."""
    return (
        f"the database can't be reached ({type(exc).__name__}: {exc.strerror or exc}); "
        "check TOKENFARM_DATABASE_URL"
    )


def _invalid(exc: DocumentInvalid) -> NoReturn:
    err = _err()
    for problem in exc.problems:
        err.print(f"[red]{escape(str(problem))}[/red]")
    count = len(exc.problems)
    err.print(f"{count} problem{'s' if count != 1 else ''}; nothing was changed")
    raise typer.Exit(EXIT_INVALID)


async def _export(settings: Settings) -> dict[str, Any]:
    engine = create_engine(settings.resolved_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            return await export_document(session, settings)
    finally:
        await engine.dispose()


@commands.command("export")
def export_command() -> None:
    """Print the live configuration as a document `apply` takes (values never included)."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        _stop("; ".join(str(e["msg"]) for e in exc.errors()), EXIT_FAILED)
    try:
        document = asyncio.run(_export(settings))
    except SQLAlchemyError as exc:
        _stop(database_problem(exc), EXIT_FAILED)
    except OSError as exc:
        _stop(_unreachable(exc), EXIT_FAILED)
    typer.echo(render(document, settings), nl=False)
