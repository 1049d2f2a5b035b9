"""Liveness and readiness probes.

`/readyz` answers 503 with a stable `reason` and a message that says what to do:

| reason | when |
| --- | --- |
| `database_unreachable` | the database doesn't answer (or not within `READINESS_TIMEOUT_SECONDS`) |
| `schema_behind` | the schema is older than this version's migrations (or not there at all) |
| `schema_unknown` | the schema is at a revision this version doesn't know (a newer one migrated) |
| `keys_not_loaded` | no encryption keys |
| `keys_mismatch` | the keys can't decrypt the stored values (a key was dropped from the list) |
"""

from __future__ import annotations

import asyncio
import functools

from alembic.script import ScriptDirectory
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from app.crypto import Keyring
from app.errors import ConfigurationError
from app.migrate import MIGRATIONS_DIR, engine_revision
from app.secrets.models import SecretValue

router = APIRouter(tags=["operations"])

READINESS_TIMEOUT_SECONDS = 5.0
NOT_READY_EXAMPLE = {
    "status": "not_ready",
    "reason": "schema_behind",
    "error": {
        "type": "not_ready",
        "message": "the database schema is at 0004, not 0005: run `tokenfarm migrate`",
        "reason": "schema_behind",
    },
}


class NotReady(Exception):
    """Why the service can't serve yet: a stable reason and a message for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@functools.cache
def _revisions() -> tuple[str, frozenset[str]]:
    """The head revision and every known one (read once: the scripts don't change at runtime)."""
    scripts = ScriptDirectory(str(MIGRATIONS_DIR))
    head = scripts.get_current_head()
    if head is None:
        raise RuntimeError(f"no migration scripts in {MIGRATIONS_DIR}")
    return head, frozenset(script.revision for script in scripts.walk_revisions())


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "Not ready; `reason` says why (`database_unreachable`, "
            "`schema_behind`, `schema_unknown`, `keys_not_loaded`, `keys_mismatch`)",
            "content": {"application/json": {"example": NOT_READY_EXAMPLE}},
        }
    },
)
async def readyz(request: Request) -> JSONResponse:
    """The database answers, its schema is at the newest migration, and the keys are loaded."""
    state = request.app.state
    try:
        revision = await check_readiness(state.engine, getattr(state, "keyring", None))
    except NotReady as exc:
        return JSONResponse(
            {
                "status": "not_ready",
                "reason": exc.reason,
                "error": {"type": "not_ready", "message": exc.message, "reason": exc.reason},
            },
            status_code=503,
        )
    return JSONResponse({"status": "ready", "revision": revision})


async def check_readiness(engine: AsyncEngine, keyring: Keyring | None) -> str:
    """The schema revision when ready; raises `NotReady` saying why not."""
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            return await _check(engine, keyring)
    except TimeoutError:
        raise NotReady(
            "database_unreachable",
            f"the database did not answer within {READINESS_TIMEOUT_SECONDS:g} s",
        ) from None


async def _check(engine: AsyncEngine, keyring: Keyring | None) -> str:
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        revision = await engine_revision(engine)
    except Exception as exc:  # whatever the driver raises, the answer is the same
        raise NotReady(
            "database_unreachable", f"the database is unreachable ({type(exc).__name__})"
        ) from None
    head, known = _revisions()
    if revision is not None and revision not in known:
        raise NotReady(
            "schema_unknown",
            f"the database schema is at {revision}, which this version of tokenfarm does not "
            f"know (its newest is {head}): a newer version migrated it; run that one",
        )
    if revision != head:
        raise NotReady(
            "schema_behind",
            f"the database schema is at {revision or 'nothing'}, not {head}: "
            "run `tokenfarm migrate`",
        )
    if keyring is None:
        raise NotReady("keys_not_loaded", "the encryption keys are not loaded")
    await _check_keys(engine, keyring)
    return head


async def _check_keys(engine: AsyncEngine, keyring: Keyring) -> None:
    """The keys decrypt the newest and the oldest stored value (a spot check, not a full scan)."""
    query = select(SecretValue.ciphertext)
    ciphertexts: list[str] = []
    async with engine.connect() as connection:
        for order in (col(SecretValue.updated_at).desc(), col(SecretValue.updated_at).asc()):
            found = (await connection.execute(query.order_by(order).limit(1))).scalar()
            if found is not None:
                ciphertexts.append(found)
    for ciphertext in ciphertexts:
        try:
            keyring.decrypt(ciphertext)
        except ConfigurationError:
            raise NotReady(
                "keys_mismatch",
                "the encryption keys can't decrypt the stored values: "
                "TOKENFARM_ENCRYPTION_KEYS must still list the key they were written with",
            ) from None
