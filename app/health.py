"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.migrate import engine_revision, head_revision

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready; `reason` says why"}})
async def readyz(request: Request) -> JSONResponse:
    """The database answers, its schema is at the newest migration, and the keys are loaded."""
    state = request.app.state
    try:
        async with state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        revision = await engine_revision(state.engine)
    except Exception as exc:
        return _not_ready(f"the database is unreachable ({type(exc).__name__})")
    head = head_revision()
    if revision != head:
        return _not_ready(
            f"the database schema is at {revision or 'nothing'}, not {head}: "
            "run `tokenfarm migrate`"
        )
    if getattr(state, "keyring", None) is None:
        return _not_ready("the encryption keys are not loaded")
    return JSONResponse({"status": "ready", "revision": revision})


def _not_ready(reason: str) -> JSONResponse:
    return JSONResponse(
        {"status": "not_ready", "error": {"type": "not_ready", "message": reason}}, status_code=503
    )
