"""Starting a connect flow for a caller: the one start that the API route, a connect link and
the console's Connect/Reconnect button share (permission, flow, the redirect with its cookie)."""

from __future__ import annotations

from fastapi import status
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.actor import Actor, ensure
from app.auth.permissions import secret_connect
from app.config import Settings
from app.connect.flow import CALLBACK_PATH, STATE_LIFETIME, Started, start_flow
from app.connect.pages import PAGE_HEADERS
from app.crypto import Keyring
from app.outbound import Outbound


def redirect_to_provider(started: Started) -> RedirectResponse:
    """302 to the provider, with the cookie that binds the flow to this browser."""
    response = RedirectResponse(started.authorize_url, status_code=status.HTTP_302_FOUND)
    response.set_cookie(
        started.cookie_name,
        started.cookie_value,
        max_age=int(STATE_LIFETIME.total_seconds()),
        path=CALLBACK_PATH,
        secure=started.secure,
        httponly=True,
        samesite="lax",
    )
    for header, value in PAGE_HEADERS.items():
        response.headers.setdefault(header, value)
    return response


async def connect_start(
    session: AsyncSession,
    keyring: Keyring,
    settings: Settings,
    name: str,
    actor: Actor,
    return_to: str | None = None,
    outbound: Outbound | None = None,
) -> RedirectResponse:
    """THE hook the console's Connect/Reconnect button calls: checks `secrets.connect:NAME`,
    starts the flow in the caller's transaction, answers the redirect to the provider."""
    ensure(actor, secret_connect(name))
    started = await start_flow(
        session,
        keyring,
        settings,
        name,
        initiator=actor.label,
        return_to=return_to,
        outbound=outbound,
    )
    return redirect_to_provider(started)
