"""`tokenfarm secrets …`: list, show, set, history and rollback, straight on the database.

No command here prints a value: `set` reads it from an environment variable, a file or stdin
(never from the command line, where it would land in the shell history and in `ps`) and answers
the new version; the others show metadata only.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncSession

from app.cli.console import (
    console,
    echo_json,
    fail,
    in_transaction,
    run_async,
    settings_and_keyring,
    timestamp,
    when,
)
from app.cli.core import SYSTEM_ACTOR
from app.db import utcnow
from app.secrets.schemas import SecretRead, SecretValueWrite, SecretVersionRead, ValueWritten
from app.secrets.store import SecretStore

# The commands of this module; app/cli/__init__.py lists them and loads them when they run.
commands = typer.Typer()
secrets_cli = typer.Typer(help="Secrets: metadata, values set by hand, history and rollback.")
commands.add_typer(secrets_cli, name="secrets")

STATUS_STYLES = {"ok": "green", "failing": "yellow", "needs_reauth": "bold red"}


class EnvironmentChoice(StrEnum):
    """The environments of `app.config.Environment`, as a command-line choice."""

    development = "development"
    test = "test"
    staging = "staging"
    production = "production"


EnvironmentOption = Annotated[
    EnvironmentChoice | None,
    typer.Option(
        help="Which environment's value (default: TOKENFARM_ENVIRONMENT; only for "
        "environment-specific secrets).",
    ),
]
# Tables without borders: easy to read, and to grep.
PLAIN: dict[str, Any] = {"box": None, "header_style": "bold", "pad_edge": False}
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _env(choice: EnvironmentChoice | None) -> str | None:
    return choice.value if choice is not None else None


def status_text(status: str) -> Text:
    """A secret's status, coloured."""
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _store_work(work: Any) -> Any:
    """Run `work(SecretStore)` in one transaction on the configured database."""
    settings, keyring = settings_and_keyring()

    async def in_store(session: AsyncSession) -> Any:
        return await work(SecretStore(session, keyring, settings))

    return run_async(in_transaction(settings, in_store))


@secrets_cli.command("list")
def list_secrets(as_json: JsonOption = False) -> None:
    """List every secret: status, version, expiry, next refresh and refresh endpoint."""

    async def work(store: SecretStore) -> list[SecretRead]:
        return await store.list_all()

    secrets: list[SecretRead] = _store_work(work)
    if as_json:
        echo_json(secrets)
        return
    now = utcnow()
    table = Table(
        "name", "status", "version", "expires", "next refresh", "refresh endpoint", **PLAIN
    )
    for secret in secrets:
        table.add_row(
            secret.name,
            status_text(secret.status),
            str(secret.version) if secret.version is not None else "-",
            when(secret.expires_at, now),
            when(secret.next_refresh_at, now),
            secret.refresh_endpoint or "-",
        )
    out = console()
    if secrets:
        out.print(table)
    else:
        out.print("no secrets yet")


@secrets_cli.command("show")
def show_secret(
    name: Annotated[str, typer.Argument(help="The secret, e.g. ACCESS_TOKEN.")],
    as_json: JsonOption = False,
) -> None:
    """Show one secret's metadata (never its value)."""

    async def work(store: SecretStore) -> SecretRead:
        return await store.describe(await store.get(name))

    secret: SecretRead = _store_work(work)
    if as_json:
        echo_json(secret)
        return
    now = utcnow()

    def at(moment: datetime | None) -> str:
        return f"{timestamp(moment)} ({when(moment, now)})" if moment else "-"

    rows: list[tuple[str, str | Text]] = [
        ("name", secret.name),
        ("description", secret.description or "-"),
        ("status", status_text(secret.status)),
        ("failure count", str(secret.failure_count)),
        ("last error", secret.last_error or "-"),
        ("environment", secret.environment),
        ("environment-specific", "yes" if secret.environment_specific else "no"),
        ("locked", "yes" if secret.locked else "no"),
        ("version", str(secret.version) if secret.version is not None else "- (no value)"),
        ("expires", at(secret.expires_at)),
        ("next refresh", at(secret.next_refresh_at)),
        ("last refreshed", at(secret.last_refreshed_at)),
        ("refresh endpoint", secret.refresh_endpoint or "-"),
        ("refresh as", secret.refresh_as or "-"),
        (
            "refresh before expiry",
            f"{secret.refresh_before_expiry_seconds} s"
            if secret.refresh_before_expiry_seconds is not None
            else "10 % of the lifetime (at least 30 s)",
        ),
        ("environments with a value", ", ".join(secret.environments) or "-"),
        ("created", timestamp(secret.created_at)),
        ("updated", timestamp(secret.updated_at)),
    ]
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in rows:
        table.add_row(label, value)
    console().print(table)


def _expires_at(value: str | None) -> datetime | None:
    """`--expires-at`: an ISO 8601 moment with a time zone."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 date and time (e.g. 2030-01-01T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise typer.BadParameter(
            "give a time zone, e.g. 2030-01-01T12:00:00Z or 2030-01-01T13:00:00+01:00"
        )
    return moment.astimezone(UTC)


def _read_value(from_env: str | None, from_file: Path | None) -> str:
    """The value's text from exactly one source: an environment variable, a file, or stdin."""
    if from_env is not None and from_file is not None:
        fail("give the value through one of --from-env or --from-file (or stdin), not both", 2)
    if from_env is not None:
        if from_env not in os.environ:
            fail(f"the environment variable {from_env} is not set")
        return os.environ[from_env]
    if from_file is not None:
        try:
            text = from_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"can't read {from_file}: {getattr(exc, 'strerror', None) or type(exc).__name__}")
    elif sys.stdin.isatty():
        text = typer.prompt("value", hide_input=True, err=True)
    else:
        text = sys.stdin.read()
    # `echo "$TOKEN" | …` and files written by editors end in a newline that is not the value's.
    return text.removesuffix("\n").removesuffix("\r")


@secrets_cli.command("set")
def set_value(
    name: Annotated[str, typer.Argument(help="The secret, e.g. REFRESH_TOKEN.")],
    from_env: Annotated[
        str | None,
        typer.Option(metavar="VAR", help="Read the value from this environment variable."),
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH", help="Read the value from this file (one trailing newline dropped)."
        ),
    ] = None,
    json_value: Annotated[
        bool,
        typer.Option(
            "--json-value", help="Parse the value as JSON (an object, a number…), not as text."
        ),
    ] = False,
    expires_at: Annotated[
        str | None,
        typer.Option(
            metavar="WHEN",
            help="When the value expires, ISO 8601 with a time zone (2030-01-01T12:00:00Z).",
        ),
    ] = None,
    expires_in: Annotated[
        int | None,
        typer.Option(metavar="SECONDS", min=1, help="Or: the value expires in this many seconds."),
    ] = None,
    environment: EnvironmentOption = None,
) -> None:
    """Set a value by hand (a new version), from --from-env, --from-file or stdin.

    Without --from-env or --from-file the value is read from stdin, or asked for (hidden) on a
    terminal. It is never taken from the command line and never printed.
    """
    if expires_at is not None and expires_in is not None:
        fail("give one of --expires-at or --expires-in, not both", 2)
    try:
        expiry = _expires_at(expires_at)
    except typer.BadParameter as exc:
        fail(f"--expires-at: {exc.message}", 2)
    if expires_in is not None:
        expiry = utcnow() + timedelta(seconds=expires_in)
    text = _read_value(from_env, from_file)
    if not text:
        fail("the value is empty; nothing was written")
    value: Any = text
    if json_value:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            # The position only: the message must not quote the value.
            fail(f"the value is not valid JSON (line {exc.lineno}, column {exc.colno})")

    async def work(store: SecretStore) -> ValueWritten:
        data = SecretValueWrite.model_validate(
            {"value": value, "environment": _env(environment), "expires_at": expiry}
        )
        secret = await store.get(name)
        return await store.set_value(
            secret,
            data.value,
            environment=data.environment,
            expires_at=data.expires_at,
            actor=SYSTEM_ACTOR.label,
            source="manual",
        )

    written: ValueWritten = _store_work(work)
    _print_written(written, "set")


def _print_written(written: ValueWritten, verb: str) -> None:
    where = "" if written.environment == "*" else f" in {written.environment}"
    expiry = f", expires {timestamp(written.expires_at)}" if written.expires_at else ""
    console().print(f"{written.name}: {verb}, version {written.version}{where}{expiry}")


@secrets_cli.command("history")
def history(
    name: Annotated[str, typer.Argument(help="The secret.")],
    environment: EnvironmentOption = None,
    as_json: JsonOption = False,
) -> None:
    """A secret's versions, newest first (never a value)."""

    async def work(store: SecretStore) -> list[SecretVersionRead]:
        return await store.versions(await store.get(name), _env(environment))

    versions: list[SecretVersionRead] = _store_work(work)
    if as_json:
        echo_json(versions)
        return
    if not versions:
        console().print(f"{name} has no versions yet")
        return
    table = Table("version", "", "source", "actor", "written", "expires", "run", **PLAIN)
    for entry in versions:
        table.add_row(
            str(entry.version),
            Text("current", style="green") if entry.current else "",
            entry.source,
            entry.actor or "-",
            timestamp(entry.created_at),
            timestamp(entry.expires_at),
            entry.run_id or "-",
        )
    console().print(table)


@secrets_cli.command("rollback")
def rollback(
    name: Annotated[str, typer.Argument(help="The secret.")],
    version: Annotated[int, typer.Argument(min=1, help="The version to make current again.")],
    environment: EnvironmentOption = None,
) -> None:
    """Make an earlier version current again (written as a new version)."""

    async def work(store: SecretStore) -> ValueWritten:
        secret = await store.get(name)
        return await store.rollback(secret, version, _env(environment), SYSTEM_ACTOR.label)

    written: ValueWritten = _store_work(work)
    _print_written(written, f"version {version} restored")
