"""What the operator commands share: rich consoles, the database they work on, error handling,
and how times read in a table.

Exit codes, the same for every command: 0 success; 1 failure (a failed run, a refused
operation, something not found, the database unreachable); 2 a usage error. Errors go to stderr
as `error: …`; tables and results go to stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from rich.console import Console
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from app.cli.core import _fail
from app.config import Settings, get_settings
from app.crypto import Keyring, load_keyring
from app.db import create_engine, session_factory, utcnow
from app.errors import TokenfarmError, is_database_outage

T = TypeVar("T")
# Piped output goes to scripts, files and `grep`: a table row stays on one line.
PIPE_WIDTH = 1000


def console() -> Console:
    """A console on stdout (colours only on a terminal, and never with NO_COLOR)."""
    return Console(width=None if sys.stdout.isatty() else PIPE_WIDTH, highlight=False)


def error_console() -> Console:
    """A console on stderr, for progress bars."""
    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` to stderr and exit with `code`."""
    _fail(message, code)
    raise AssertionError("unreachable")  # _fail always raises


def database_problem(exc: SQLAlchemyError) -> str:
    """What went wrong with the database, without SQL or its parameters (they may quote
    ciphertexts)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    detail = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else ""
    return (
        f"the database failed ({type(cause).__name__}{': ' + detail if detail else ''}); "
        "check TOKENFARM_DATABASE_URL and that the schema is migrated (`tokenfarm migrate`)"
    )


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; a domain, validation or database error exits 1 with `error: …`."""
    try:
        return asyncio.run(work)
    except TokenfarmError as exc:
        fail(exc.message)
    except ValidationError as exc:
        fail("; ".join(_validation_message(e) for e in exc.errors()))
    except SQLAlchemyError as exc:
        fail(database_problem(exc))
    except OSError as exc:
        if not is_database_outage(exc):
            raise
        fail(f"the database is unavailable ({type(exc).__name__}); try again once it is up")


def _validation_message(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def settings_and_keyring() -> tuple[Settings, Keyring]:
    """The configured settings and keys (a configuration error exits 1)."""
    try:
        settings = get_settings()
        return settings, load_keyring(settings)
    except TokenfarmError as exc:
        fail(exc.message)
    except ValidationError as exc:
        fail("; ".join(_validation_message(e) for e in exc.errors()))


@asynccontextmanager
async def transaction(settings: Settings) -> AsyncIterator[AsyncSession]:
    """A session in one transaction on the configured database (committed when the block ends)."""
    engine = create_engine(settings.resolved_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            yield session
    finally:
        await engine.dispose()


async def in_transaction(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """`work(session)` in one transaction."""
    async with transaction(settings) as session:
        return await work(session)


def when(moment: datetime | None, now: datetime | None = None) -> str:
    """`in 4m 10s`, `3h 2m ago` or `-`: how far a moment is from now."""
    if moment is None:
        return "-"
    seconds = int((moment - (now or utcnow())).total_seconds())
    text = duration(abs(seconds))
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def duration(seconds: int) -> str:
    """`45s`, `4m 10s`, `3h 2m`, `2d 5h`: the two largest units."""
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{amount}{unit}" for amount, unit in parts[:2])


def timestamp(moment: datetime | None) -> str:
    """`2030-01-01 12:00:00Z` (UTC, to the second) or `-`."""
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def echo_json(data: Any) -> None:
    """Print models, lists and dicts as JSON for scripts (never coloured or wrapped)."""
    typer.echo(json.dumps(to_jsonable_python(data), indent=2))
