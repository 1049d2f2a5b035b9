"""Shared FastAPI dependencies: settings, the request's session, the keyring and the runner.

Dependencies are `async def` even when they don't await: FastAPI runs a plain `def` dependency
in a worker thread, a hop that costs more than the lookup itself on every request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.crypto import Keyring
from app.outbound import Outbound

if TYPE_CHECKING:
    from app.runs.runner import Runner


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with (`create_app(settings)`; tests pass their own)."""
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request: committed once at the end, rolled back and closed on any error."""
    async with request.app.state.session_factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def get_keyring(request: Request) -> Keyring:
    """The keyring loaded at start-up."""
    keyring: Keyring = request.app.state.keyring
    return keyring


async def get_runner(request: Request) -> Runner:
    """The run service created at start-up."""
    runner: Runner = request.app.state.runner
    return runner


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
# scope="function": commit before the response is sent, so a 201 is never followed by a lost write.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
KeyringDep = Annotated[Keyring, Depends(get_keyring)]
RunnerDep = Annotated["Runner", Depends(get_runner)]


async def get_outbound(request: Request) -> Outbound:
    """The egress-guarded client of runs, shared by everything that calls another server."""
    outbound: Outbound = request.app.state.runner.outbound
    return outbound


OutboundDep = Annotated[Outbound, Depends(get_outbound)]
