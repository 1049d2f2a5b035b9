"""`tokenfarm rotate-keys`: re-encrypt everything stored encrypted with the first key of
TOKENFARM_ENCRYPTION_KEYS, so that the keys after it can be removed.

Rotation goes table by table in batches, one short transaction each, and writes a row only if it
still holds the ciphertext that was read (compare-and-set): a replica that writes a new value
meanwhile is never overwritten with the old one. Rows already on the first key are left alone, so
running it again is harmless (and cheap), and an interrupted rotation just resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from cryptography.fernet import InvalidToken
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import column, func, inspect, select, table, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.cli.console import console, error_console, fail, run_async, settings_and_keyring
from app.config import Settings
from app.crypto import Keyring
from app.db import create_engine
from app.errors import ConfigurationError

# The commands of this module; app/cli/__init__.py lists them and loads them when they run.
commands = typer.Typer()

MAX_PASSES = 3  # rows that change under a pass are taken again; a replica with old keys won't stop


@dataclass(frozen=True)
class EncryptedColumn:
    """A column that holds Fernet ciphertexts; `optional` tables come with later migrations."""

    table: str
    key: str
    column: str
    what: str
    optional: bool = False


ENCRYPTED_COLUMNS = (
    EncryptedColumn("secret_value", "id", "ciphertext", "current values"),
    EncryptedColumn("secret_version", "id", "ciphertext", "versions"),
    EncryptedColumn("run", "id", "recovery", "recovery records"),
    EncryptedColumn(
        "webhook", "id", "signing_secret_ciphertext", "webhook signing secrets", optional=True
    ),
)

WHAT = {target.table: target.what for target in ENCRYPTED_COLUMNS}


@dataclass
class Rotation:
    """What a rotation did: rows re-encrypted per column, rows left alone, rows it can't read."""

    rotated: dict[str, int] = field(default_factory=dict)
    already_current: int = 0
    unreadable: list[str] = field(default_factory=list)
    changed_meanwhile: int = 0

    @property
    def total_rotated(self) -> int:
        """Rows re-encrypted, in every table."""
        return sum(self.rotated.values())


Advance = Callable[[EncryptedColumn, int], None]


async def _present_columns(engine: AsyncEngine) -> list[EncryptedColumn]:
    """The encrypted columns of this database's schema; a missing required table is an error."""

    def inspect_schema(connection: Any) -> dict[str, set[str]]:
        inspector = inspect(connection)
        return {
            name: {c["name"] for c in inspector.get_columns(name)}
            for name in inspector.get_table_names()
        }

    async with engine.connect() as connection:
        schema = await connection.run_sync(inspect_schema)
    present = []
    for target in ENCRYPTED_COLUMNS:
        if target.table not in schema:
            if target.optional:
                continue
            raise ConfigurationError(
                f"table {target.table!r} does not exist: migrate the database first "
                "(`tokenfarm migrate`)"
            )
        if target.column not in schema[target.table]:
            # Leaving it unrotated would make its values unreadable once the old keys are gone.
            raise ConfigurationError(
                f"table {target.table!r} has no column {target.column!r}; this version of "
                "tokenfarm can't rotate that schema (upgrade tokenfarm, or migrate the database)"
            )
        present.append(target)
    return present


def _table(target: EncryptedColumn) -> Any:
    return table(target.table, column(target.key), column(target.column))


async def _count(connection: AsyncConnection, target: EncryptedColumn) -> int:
    t = _table(target)
    query = select(func.count()).select_from(t).where(t.c[target.column].is_not(None))
    return int((await connection.execute(query)).scalar_one())


async def count_encrypted(engine: AsyncEngine, targets: list[EncryptedColumn]) -> dict[str, int]:
    """How many rows of each column hold a ciphertext."""
    async with engine.connect() as connection:
        return {target.table: await _count(connection, target) for target in targets}


async def _rotate_column(
    engine: AsyncEngine,
    keyring: Keyring,
    target: EncryptedColumn,
    batch_size: int,
    result: Rotation,
    advance: Advance,
) -> None:
    """One pass over a column, a transaction per batch, in primary-key order."""
    t = _table(target)
    key, value = t.c[target.key], t.c[target.column]
    last: Any = None
    while True:
        query = select(key, value).where(value.is_not(None)).order_by(key).limit(batch_size)
        if last is not None:
            query = query.where(key > last)
        async with engine.begin() as connection:
            rows = (await connection.execute(query)).all()
            for row_key, ciphertext in rows:
                if keyring.is_current(ciphertext):
                    result.already_current += 1
                    continue
                try:
                    rotated = keyring.rotate(ciphertext)
                except InvalidToken:
                    result.unreadable.append(f"{target.table} #{row_key}")
                    continue
                written = await connection.execute(
                    update(t).where(key == row_key, value == ciphertext).values({value: rotated})
                )
                if written.rowcount == 1:
                    result.rotated[target.table] = result.rotated.get(target.table, 0) + 1
                else:
                    # Written meanwhile (by a replica): the next pass looks at it again.
                    result.changed_meanwhile += 1
        if not rows:
            return
        advance(target, len(rows))
        last = rows[-1][0]


async def rotate_keys(
    engine: AsyncEngine,
    keyring: Keyring,
    *,
    batch_size: int = 500,
    on_start: Callable[[dict[str, int]], None] | None = None,
    advance: Advance | None = None,
) -> Rotation:
    """Re-encrypt every stored ciphertext that is not on the keyring's first key."""
    targets = await _present_columns(engine)
    result = Rotation(rotated=dict.fromkeys((t.table for t in targets), 0))
    for attempt in range(MAX_PASSES):
        if on_start is not None:
            on_start(await count_encrypted(engine, targets))
        pass_result = Rotation()
        for target in targets:
            await _rotate_column(
                engine, keyring, target, batch_size, pass_result, advance or (lambda *_: None)
            )
        for name, count in pass_result.rotated.items():
            result.rotated[name] += count
        result.unreadable = pass_result.unreadable
        result.changed_meanwhile = pass_result.changed_meanwhile
        if attempt == 0:
            result.already_current = pass_result.already_current
        if not pass_result.changed_meanwhile:
            break
    return result


def key_count(settings: Settings) -> int:
    """How many keys are configured (the development key file counts when none are set)."""
    if settings.encryption_keys:
        return len([k for k in settings.encryption_keys.split(",") if k.strip()])
    if settings.key_file.exists():
        return len([k for k in settings.key_file.read_text().splitlines() if k.strip()])
    return 1


async def _rotate_with_progress(settings: Settings, keyring: Keyring, batch_size: int) -> Rotation:
    engine = create_engine(settings.resolved_database_url)
    progress = Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=error_console(),
    )
    tasks: dict[str, Any] = {}

    def on_start(counts: dict[str, int]) -> None:
        for name, count in counts.items():
            if name in tasks:
                progress.reset(tasks[name], total=count)
            else:
                tasks[name] = progress.add_task(WHAT[name], total=count)

    def advance(target: EncryptedColumn, rows: int) -> None:
        progress.advance(tasks[target.table], rows)

    try:
        with progress:
            return await rotate_keys(
                engine, keyring, batch_size=batch_size, on_start=on_start, advance=advance
            )
    finally:
        await engine.dispose()


@commands.command("rotate-keys")
def rotate_keys_command(
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per transaction.")] = 500,
) -> None:
    """Re-encrypt everything stored with the first key of TOKENFARM_ENCRYPTION_KEYS.

    With TOKENFARM_ENCRYPTION_KEYS="NEW,OLD…", every value, version, recovery record and webhook
    signing secret is re-encrypted with NEW; afterwards the old keys can be removed. Give every
    replica the new list first, so that what they write meanwhile is on NEW too. Running it again
    is harmless.
    """
    settings, keyring = settings_and_keyring()
    result = run_async(_rotate_with_progress(settings, keyring, batch_size))
    out = console()
    by_kind = ", ".join(
        f"{result.rotated.get(target.table, 0)} {target.what}"
        for target in ENCRYPTED_COLUMNS
        if target.table in result.rotated
    )
    out.print(
        f"re-encrypted {result.total_rotated} rows with the first key ({by_kind}); "
        f"{result.already_current} were on it already"
    )
    if result.unreadable:
        shown = ", ".join(result.unreadable[:10])
        more = f" and {len(result.unreadable) - 10} more" if len(result.unreadable) > 10 else ""
        fail(
            f"{len(result.unreadable)} stored ciphertexts can't be decrypted with any configured "
            f"key ({shown}{more}): add the key they were written with to "
            "TOKENFARM_ENCRYPTION_KEYS and run rotate-keys again; remove no key until then"
        )
    if result.changed_meanwhile:
        fail(
            f"{result.changed_meanwhile} rows kept changing while they were rotated: a replica "
            "may still write with another first key. Give every replica the new key list, "
            "then run rotate-keys again; remove no key until then"
        )
    old_keys = key_count(settings) - 1
    if old_keys:
        out.print(
            f"everything is encrypted with the first key: the other {old_keys} key(s) can now be "
            "removed from TOKENFARM_ENCRYPTION_KEYS (restart every replica with the new list)"
        )
    else:
        out.print("everything is encrypted with the only configured key; there is no old key")
