"""`tokenfarm runs …`: the run log, and recovering runs whose answer was not stored."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from app.cli.core import SYSTEM_ACTOR, _fail, cli
from app.config import get_settings
from app.errors import TokenfarmError

runs_cli = typer.Typer(help="The run log, and recovering runs whose answer was not stored.")
cli.add_typer(runs_cli, name="runs")


async def _recover(run_id: str, force: bool) -> Any:
    from app.crypto import load_keyring
    from app.db import create_engine, session_factory
    from app.runs.recovery import Recovery

    settings = get_settings()
    keyring = load_keyring(settings)
    engine = create_engine(settings.resolved_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            recovery = Recovery(session, keyring, settings)
            return await recovery.recover(run_id, actor=SYSTEM_ACTOR.label, force=force)
    finally:
        await engine.dispose()


@runs_cli.command("recover")
def recover_run(
    run_id: Annotated[str, typer.Argument(help="The run's id (see GET /v1/runs?status=...).")],
    force: Annotated[
        bool, typer.Option(help="Write even over secrets that changed since the run began.")
    ] = False,
) -> None:
    """Write what a run's upstream answered when storing it failed or the process died."""
    try:
        result = asyncio.run(_recover(run_id, force))
    except TokenfarmError as exc:
        _fail(exc.message)
    for written in result.written:
        typer.echo(f"{written.secret}: version {written.version}")
    typer.echo(f"run {run_id} recovered")
