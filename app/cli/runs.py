"""`tokenfarm run`, `tokenfarm refresh` and `tokenfarm runs …`: run endpoints through the real
runner in this process, read and follow the run log, and recover runs whose answer was not stored.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

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
from app.config import Settings
from app.crypto import Keyring
from app.db import create_engine, session_factory
from app.errors import Conflict
from app.pipeline.schemas import SECRET_NAME_PATTERN
from app.runs.log import RunLog
from app.runs.runner import RunOutcome
from app.runs.schemas import RUN_ID_PATTERN, RecoveryResult, RunSummary
from app.secrets.schemas import SecretRead
from app.secrets.store import SecretStore
from app.services.schemas import READABLE_ID_PATTERN, SLUG_PATTERN

if TYPE_CHECKING:
    from app.runs.recovery import ReplayReport

# The commands of this module; app/cli/__init__.py lists them and loads them when they run.
commands = typer.Typer()
runs_cli = typer.Typer(
    help="The run log (newest last; --follow for new runs), and recovering runs whose answer "
    "was not stored."
)
commands.add_typer(runs_cli, name="runs")

RUN_STATUS_STYLES = {
    "succeeded": "green",
    "failed": "bold red",
    "storing": "yellow",
    "recovered": "cyan",
}
FOLLOW_WINDOW = 200  # runs read per poll: more than this many new ones a second are not shown


class RunStatusChoice(StrEnum):
    """The statuses of `app.runs.schemas.RunStatus`, as a command-line choice."""

    succeeded = "succeeded"
    failed = "failed"
    storing = "storing"
    recovered = "recovered"


class RunTriggerChoice(StrEnum):
    """The triggers of `app.runs.schemas.RunTrigger`, as a command-line choice."""

    api = "api"
    refresh = "refresh"
    read = "read"
    schedule = "schedule"
    expiry = "expiry"
    connect = "connect"


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
ForceOption = Annotated[
    bool,
    typer.Option(
        help="Run even though a target secret is needs_reauth (after fixing the grant some "
        "other way than setting a value)."
    ),
]


# --- running ---------------------------------------------------------------------------------


@dataclass
class RunReport:
    """A run as the command prints it: the outcome and the secrets' state afterwards."""

    endpoint: str
    outcome: RunOutcome
    secrets: list[SecretRead]

    def as_json(self) -> dict[str, Any]:
        """The run's answer as the API gives it, plus each secret's version and expiry."""
        failed = self.outcome.error_body is not None
        return {
            "run_id": self.outcome.run_id,
            "endpoint": self.endpoint,
            "status": self.outcome.status,
            "error": self.outcome.error_body,
            "response": None if failed else self.outcome.response,
            "coalesced": self.outcome.coalesced,
            "adopted": self.outcome.adopted,
            "secrets": [
                {"name": s.name, "version": s.version, "expires_at": s.expires_at}
                for s in self.secrets
            ],
        }


async def _run(
    settings: Settings,
    keyring: Keyring,
    slug: str,
    readable_id: str,
    *,
    trigger: str,
    force: bool,
    secret: str | None = None,
) -> RunReport:
    """Run one endpoint with the real runner as the system actor, then read the secrets back."""
    from app.runtime import runtime

    async with runtime(settings, keyring) as parts:
        outcome = await parts.runner.run_endpoint(
            slug, readable_id, actor=SYSTEM_ACTOR, trigger=trigger, force=force
        )
        names = [secret] if secret else sorted(outcome.written)
        async with parts.session_factory() as session:
            store = SecretStore(session, keyring, settings)
            states = [await store.describe(await store.get(name)) for name in names]
    return RunReport(f"{slug}/{readable_id}", outcome, states)


def _report(report: RunReport, as_json: bool) -> None:
    """Print a run; a failed run exits 1 with its error type, class and message."""
    outcome = report.outcome
    if as_json:
        echo_json(report.as_json())
    else:
        out = console()
        status = Text(outcome.status, style=RUN_STATUS_STYLES.get(outcome.status, ""))
        notes = " (shared a run in flight)" if outcome.coalesced else ""
        notes += " (adopted: another replica had just refreshed)" if outcome.adopted else ""
        out.print(Text.assemble(status, f"  {report.endpoint}  run {outcome.run_id}{notes}"))
        for state in report.secrets:
            version = f"version {state.version}" if state.version is not None else "no value"
            expiry = (
                f"  expires {timestamp(state.expires_at)} ({when(state.expires_at)})"
                if state.expires_at
                else ""
            )
            out.print(f"  {state.name}  {version}{expiry}")
        if outcome.error_body is None and outcome.response is not None:
            out.print(f"  response: {outcome.response}", markup=False)
    if outcome.error_body is not None:
        error = outcome.error_body
        kind = str(error.get("type", "error"))
        if error.get("error_class"):
            kind += f" ({error['error_class']})"
        hint = ""
        if error.get("recoverable"):
            hint = f"; `tokenfarm runs recover {outcome.run_id}` writes what the upstream answered"
        fail(f"{kind}: {error.get('message', '')}{hint}")


def _endpoint_argument(value: str) -> tuple[str, str]:
    slug, _, readable_id = value.partition("/")
    if not (re.fullmatch(SLUG_PATTERN, slug) and re.fullmatch(READABLE_ID_PATTERN, readable_id)):
        raise typer.BadParameter(f"{value!r} is not SLUG/READABLE_ID (e.g. oauth/refresh-token)")
    return slug, readable_id


@commands.command("run")
def run_endpoint(
    endpoint: Annotated[
        str, typer.Argument(metavar="SLUG/ID", help="The endpoint, e.g. oauth/refresh-token.")
    ],
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Run an endpoint now, in this process, as the system; exit 1 when the run fails."""
    try:
        slug, readable_id = _endpoint_argument(endpoint)
    except typer.BadParameter as exc:
        fail(exc.message, 2)
    settings, keyring = settings_and_keyring()
    report = run_async(_run(settings, keyring, slug, readable_id, trigger="api", force=force))
    _report(report, as_json)


async def _refresh_endpoint(settings: Settings, keyring: Keyring, name: str) -> tuple[str, str]:
    async def work(session: Any) -> tuple[str, str]:
        secret = await SecretStore(session, keyring, settings).get(name)
        if not secret.refresh_endpoint:
            raise Conflict(
                f"secret {name!r} has no refresh_endpoint; bind one with PATCH "
                f'/v1/secrets/{name} {{"refresh_endpoint": "SLUG/READABLE_ID"}}'
            )
        slug, readable_id = secret.refresh_endpoint.split("/", 1)
        return slug, readable_id

    return await in_transaction(settings, work)


@commands.command("refresh")
def refresh_secret(
    secret: Annotated[str, typer.Argument(help="The secret, e.g. ACCESS_TOKEN.")],
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Run the secret's refresh endpoint now, in this process; exit 1 when the run fails."""
    settings, keyring = settings_and_keyring()

    async def refresh() -> RunReport:
        slug, readable_id = await _refresh_endpoint(settings, keyring, secret)
        return await _run(
            settings, keyring, slug, readable_id, trigger="refresh", force=force, secret=secret
        )

    _report(run_async(refresh()), as_json)


# --- the run log -----------------------------------------------------------------------------


def _run_table(header: bool, fixed: bool) -> Table:
    """The run log's columns; `fixed` widths make rows printed later (--follow) line up."""

    def width(columns: int) -> int | None:
        return columns if fixed else None

    table = Table(box=None, show_header=header, header_style="bold", pad_edge=False)
    table.add_column("started", width=20, no_wrap=True)
    table.add_column("status", width=9, no_wrap=True)
    table.add_column("trigger", width=8, no_wrap=True)
    table.add_column("endpoint", width=width(30), overflow="fold")
    table.add_column("secrets", width=width(24), overflow="fold")
    table.add_column("ms", width=7, justify="right", no_wrap=True)
    table.add_column("run", width=36, no_wrap=True)
    table.add_column("error", overflow="fold")
    return table


def _add_run(table: Table, run: RunSummary) -> None:
    error = "-"
    if run.error_type:
        error = run.error_type + (f" ({run.error_class})" if run.error_class else "")
        error += f": {run.error_message}" if run.error_message else ""
        error += " [recoverable]" if run.recoverable else ""
    table.add_row(
        timestamp(run.started_at),
        Text(run.status, style=RUN_STATUS_STYLES.get(run.status, "")),
        run.trigger,
        f"{run.service}/{run.endpoint}",
        ", ".join(run.secrets) or "-",
        f"{run.duration_ms:.0f}",
        run.id,
        error,
    )


def _print_runs(
    out: Console, runs: list[RunSummary], header: bool, as_json: bool, fixed: bool = False
) -> None:
    """Print runs oldest first (the newest last, as in a log)."""
    if as_json:
        for run in runs:
            # One object a line, so a script can read them as they come.
            typer.echo(run.model_dump_json())
        sys.stdout.flush()
        return
    table = _run_table(header, fixed)
    for run in runs:
        _add_run(table, run)
    if runs or header:
        out.print(table)
    sys.stdout.flush()


@dataclass
class RunFilters:
    """What `tokenfarm runs` shows."""

    status: str | None
    secret: str | None
    service: str | None
    trigger: str | None

    def query(self) -> dict[str, Any]:
        """Keyword arguments of `RunLog.list_all`."""
        return {
            "status": self.status,
            "secret": self.secret,
            "service": self.service,
            "trigger": self.trigger,
        }


async def _follow(
    settings: Settings, filters: RunFilters, limit: int, interval: float, as_json: bool
) -> None:
    """Print the newest runs, then every new run (and every change of status) until a signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    out = console()
    engine = create_engine(settings.resolved_database_url)
    factory = session_factory(engine)
    shown: dict[str, str] = {}
    first = True
    try:
        while not stop.is_set():
            async with factory() as session:
                runs = await RunLog(session).list_all(
                    **filters.query(), limit=max(limit, FOLLOW_WINDOW)
                )
            fresh = [run for run in reversed(runs) if shown.get(run.id) != run.status]
            if first:
                fresh = fresh[-limit:]
            _print_runs(out, fresh, header=first, as_json=as_json, fixed=True)
            # Only the window is remembered: older runs can't come back into it.
            shown = {run.id: run.status for run in runs}
            first = False
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass
    finally:
        await engine.dispose()


@runs_cli.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many runs to show.")] = 20,
    status: Annotated[RunStatusChoice | None, typer.Option(help="Only runs with it.")] = None,
    secret: Annotated[str | None, typer.Option(help="Only runs that targeted this secret.")] = None,
    service: Annotated[str | None, typer.Option(help="Only runs of this service slug.")] = None,
    trigger: Annotated[RunTriggerChoice | None, typer.Option(help="Only runs it started.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Then print new runs as they come, until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, max=60, help="Seconds between polls with --follow.")
    ] = 1.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: an array, or one object a line with -f.")
    ] = False,
) -> None:
    """The run log: every failed run, and every run of an endpoint with enable_log."""
    if ctx.invoked_subcommand is not None:
        return
    if secret is not None and not re.fullmatch(SECRET_NAME_PATTERN, secret):
        fail(f"--secret: {secret!r} is not a secret name", 2)
    if service is not None and not re.fullmatch(SLUG_PATTERN, service):
        fail(f"--service: {service!r} is not a service slug", 2)
    settings, _ = settings_and_keyring()
    filters = RunFilters(
        status=status.value if status else None,
        secret=secret,
        service=service,
        trigger=trigger.value if trigger else None,
    )
    if follow:
        run_async(_follow(settings, filters, limit, interval, as_json))
        return

    async def work(session: Any) -> list[RunSummary]:
        return await RunLog(session).list_all(**filters.query(), limit=limit)

    found: list[RunSummary] = run_async(in_transaction(settings, work))
    if as_json:
        echo_json(found)
    elif not found:
        console().print("no runs in the log")
    else:
        _print_runs(console(), list(reversed(found)), header=True, as_json=False)


async def _recover(run_id: str, force: bool) -> RecoveryResult:
    from app.runs.recovery import Recovery

    settings, keyring = settings_and_keyring()

    async def work(session: Any) -> RecoveryResult:
        recovery = Recovery(session, keyring, settings)
        return await recovery.recover(run_id, actor=SYSTEM_ACTOR.label, force=force)

    return await in_transaction(settings, work)


async def _replay_spool() -> ReplayReport:
    from app.runs.recovery import replay_spool
    from app.runs.spool import Spool

    settings, keyring = settings_and_keyring()
    engine = create_engine(settings.resolved_database_url)
    try:
        spool = Spool(settings.data_dir / "spool", keyring)
        return await replay_spool(
            session_factory(engine), keyring, settings, spool, actor=SYSTEM_ACTOR.label
        )
    finally:
        await engine.dispose()


@runs_cli.command("recover")
def recover_run(
    run_id: Annotated[
        str | None, typer.Argument(help="The run's id (see `tokenfarm runs`).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Write even over secrets that changed since the run began.")
    ] = False,
    spool: Annotated[
        bool,
        typer.Option(
            "--spool",
            help="Write the answers waiting in this data dir's spool (kept while the database "
            "was down; a running `tokenfarm serve` writes them itself once it is back).",
        ),
    ] = False,
) -> None:
    """Write what a run's upstream answered when storing it failed or the process died."""
    if spool:
        if run_id is not None or force:
            fail("--spool takes no run id and no --force", 2)
        report = run_async(_replay_spool())
        for result in report.recovered:
            for written in result.written:
                typer.echo(f"{written.secret}: version {written.version}")
            typer.echo(f"run {result.run_id} recovered")
        for done in report.done:
            typer.echo(f"run {done} was already written")
        for refused, why in report.refused.items():
            typer.echo(f"run {refused} kept in the run log, not written: {why}", err=True)
        if not report.recovered and not report.refused and not report.done:
            typer.echo("the spool is empty")
        return
    if run_id is None:
        fail("name a run id (see `tokenfarm runs`), or --spool", 2)
    if not re.fullmatch(RUN_ID_PATTERN, run_id):
        fail(f"{run_id!r} is not a run id (see `tokenfarm runs`)", 2)
    result = run_async(_recover(run_id, force))
    for written in result.written:
        typer.echo(f"{written.secret}: version {written.version}")
    typer.echo(f"run {run_id} recovered")
