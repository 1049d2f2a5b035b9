"""HTTP routes of the connect flow.

`POST /v1/secrets/{name}/connect-links` and `GET /connect/{name}` need `secrets.connect:NAME`;
`GET /connect/link` (the link is the credential) and `GET /connect/callback` (the browser has
none; the state is checked) take no credential and open nothing else to anonymous callers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field

from app.auth.actor import ensure
from app.auth.dependencies import CurrentActor
from app.auth.permissions import secret_connect
from app.connect.flow import (
    CALLBACK_PATH,
    MAX_LINK_SECONDS,
    Callback,
    FlowRefused,
    create_link,
    open_link,
)
from app.connect.pages import PAGE_HEADERS, connected_page, refused_page
from app.connect.start import connect_start, redirect_to_provider
from app.dependencies import KeyringDep, OutboundDep, SessionDep, SettingsDep
from app.errors import TokenfarmError
from app.schemas import ErrorResponse, StrictModel

router = APIRouter(tags=["connect"])


CONNECT_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        403: "The caller lacks `secrets.connect:NAME`, or a client credential may not be sent "
        "to the provider (its allowed_destinations)",
        404: "No such secret, or its provider is gone",
        409: "Not a connected secret, TOKENFARM_PUBLIC_URL unset (`public_url_not_set`), or the "
        "provider has no authorization endpoint",
        422: "`return_to` is not in TOKENFARM_CONNECT_RETURN_ORIGINS, or a credential is missing",
        502: "The provider's endpoints could not be discovered",
    }.items()
}


class ConnectLinkRequest(StrictModel):
    """Who the link is for and where the browser goes afterwards."""

    return_to: str | None = Field(
        None,
        max_length=2000,
        description="Where to send the browser after a successful connect (303); its origin "
        "must be in TOKENFARM_CONNECT_RETURN_ORIGINS. Default: a 'connected' page.",
    )
    expires_in: int = Field(
        MAX_LINK_SECONDS, ge=60, le=MAX_LINK_SECONDS, description="Seconds the link works."
    )


class ConnectLinkRead(BaseModel):
    """A single-use link: hand it to the person who will consent."""

    url: str
    expires_at: datetime


@router.post(
    "/v1/secrets/{name}/connect-links",
    status_code=status.HTTP_201_CREATED,
    responses=CONNECT_ERRORS,
)
async def create_connect_link(
    name: str,
    actor: CurrentActor,
    session: SessionDep,
    settings: SettingsDep,
    data: ConnectLinkRequest | None = None,
) -> ConnectLinkRead:
    """A single-use link (at most an hour) that starts the connect flow of `name` for whoever
    opens it; needs `secrets.connect:NAME`. It also reconnects a `needs_reauth` secret."""
    ensure(actor, secret_connect(name))
    data = data or ConnectLinkRequest()
    url, expires_at = await create_link(
        session,
        settings,
        name,
        initiator=actor.label,
        return_to=data.return_to,
        expires_in=data.expires_in,
    )
    return ConnectLinkRead(url=url, expires_at=expires_at)


HTML_PAGES: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"text/html": {}}}
    for status, description in {
        200: "The 'connected' page",
        400: "A page saying why the connect can't go on and what to do (nothing changed)",
        409: "A page saying the connect could not start (e.g. TOKENFARM_PUBLIC_URL unset)",
        502: "A page saying the provider failed (nothing changed)",
    }.items()
}
REDIRECTS: dict[int | str, dict[str, Any]] = {
    302: {"description": "To the provider's authorization endpoint"},
    303: {"description": "To the link's `return_to` after a connect"},
}


@router.get(
    CALLBACK_PATH,
    response_class=HTMLResponse,
    responses={**HTML_PAGES, 303: REDIRECTS[303]},
)
async def connect_callback(request: Request) -> Response:
    """The redirect URI. Checks `state` first (unknown, expired, used, another browser: a 400
    page, nothing sent anywhere, nothing changed), then exchanges the code with the PKCE
    verifier and stores the tokens -> a 'connected' page, or 303 to an allowed `return_to`."""
    state = request.app.state
    callback = Callback(state.session_factory, state.keyring, state.settings, state.runner.outbound)
    try:
        connected = await callback.handle(dict(request.query_params), dict(request.cookies))
    except FlowRefused as refused:
        return refused_page(refused.message, refused.hint, refused.status_code)
    if connected.return_to is not None:
        response: Response = RedirectResponse(connected.return_to, status_code=303)
        response.headers.update(PAGE_HEADERS)
    else:
        response = connected_page(connected.secret)
    return response


@router.get(
    "/connect/link",
    response_class=HTMLResponse,
    responses={**HTML_PAGES, 302: REDIRECTS[302], 422: {"description": "No token"}},
)
async def open_connect_link(
    session: SessionDep,
    keyring: KeyringDep,
    settings: SettingsDep,
    outbound: OutboundDep,
    token: str = Query(..., max_length=200, description="The link's token."),
) -> Response:
    """Open a connect link: once, within its hour -> 302 to the provider. If the flow can't
    start (say, the provider lost its authorization endpoint), the link stays unused."""
    try:
        started = await open_link(session, keyring, settings, token, outbound)
    except FlowRefused as refused:
        return refused_page(refused.message, refused.hint, refused.status_code)
    except TokenfarmError as error:
        await session.rollback()  # the link was not used after all
        return refused_page(
            f"The connect could not start: {error.message}",
            "Nothing was changed and the link still works; ask whoever sent it to fix this.",
            502 if error.status_code >= 500 else 409,
        )
    return redirect_to_provider(started)


@router.get("/connect/{name}", response_model=None, status_code=302, responses=CONNECT_ERRORS)
async def connect_secret(
    name: str,
    actor: CurrentActor,
    session: SessionDep,
    keyring: KeyringDep,
    settings: SettingsDep,
    outbound: OutboundDep,
    return_to: str | None = Query(None, max_length=2000),
) -> Response:
    """Start the connect flow of `name` for the caller (`secrets.connect:NAME`) -> 302 to the
    provider. (`callback` and `link` are routes of their own: connect secrets so named with a
    connect link.)"""
    return await connect_start(session, keyring, settings, name, actor, return_to, outbound)
