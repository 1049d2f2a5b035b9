"""The bundled token server's pages for people: consent (authorization code) and device entry.

`GET /oauth/authorize` checks an RFC 6749 §4.1.1 request and shows a consent page with Allow and
Deny; the decision redirects back with a code (bound to client, redirect URI and PKCE challenge)
or `error=access_denied`. `GET /device` takes an RFC 8628 user code and asks the same question.
Requests whose client or redirect URI is wrong get a page here and never a redirect (§4.1.2.1:
an unchecked redirect would be an open redirector). Everything shown is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Final
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from app.demo.token_server import (
    AUTHORIZE_PATH,
    DEVICE_PAGE_PATH,
    NO_STORE_HEADERS,
    ConsentRequest,
    OAuthError,
    TokenServerState,
    _read_form,
    _single,
    _split_scope,
)

# Pages must not be framed (clickjacking a consent button) nor cached.
PAGE_HEADERS: Final = {
    **NO_STORE_HEADERS,
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'; default-src 'none'",
}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def _redirect(redirect_uri: str, params: dict[str, str | None]) -> Response:
    """303 back to the client with `params` added to its redirect URI's query (§4.1.2)."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if "?" in redirect_uri else "?"
    return RedirectResponse(f"{redirect_uri}{separator}{query}", status_code=303)


def _question(client_id: str, scope: tuple[str, ...]) -> str:
    scopes = "".join(f"<li>{escape(s)}</li>" for s in scope) or "<li>(no scope)</li>"
    return (
        f"<p>The application <strong>{escape(client_id)}</strong> asks for access to:</p>"
        f"<ul>{scopes}</ul>"
    )


def _buttons(hidden: dict[str, str], action: str) -> str:
    fields = "".join(
        f'<input type=hidden name="{escape(k)}" value="{escape(v)}">' for k, v in hidden.items()
    )
    return (
        f'<form method=post action="{escape(action)}">{fields}'
        "<button type=submit name=decision value=allow>Allow</button> "
        "<button type=submit name=decision value=deny>Deny</button></form>"
    )


def consent_routes(state: TokenServerState) -> list[Route]:
    """The consent and device pages of a token server over `state`."""

    async def authorize(request: Request) -> Response:
        query = request.query_params
        client_id = query.get("client_id")
        redirect_uri = query.get("redirect_uri")
        if not client_id or client_id not in state.clients:
            return _page("Unknown application", "<p>client_id names no client.</p>", 400)
        if not redirect_uri or not state._redirect_uri_registered(client_id, redirect_uri):
            return _page(
                "Wrong redirect URI",
                "<p>redirect_uri is not registered for this application.</p>",
                400,
            )
        client_state = query.get("state")

        def refuse(error: str, description: str) -> Response:
            return _redirect(
                redirect_uri,
                {"error": error, "error_description": description, "state": client_state},
            )

        if query.get("response_type") != "code":
            return refuse("unsupported_response_type", "only response_type=code is supported")
        challenge = query.get("code_challenge")
        method = query.get("code_challenge_method", "plain" if challenge else None)
        if challenge is None and state.require_pkce:
            return refuse("invalid_request", "PKCE is required: send code_challenge (S256)")
        if challenge is not None and method != "S256":
            return refuse("invalid_request", "code_challenge_method must be S256")
        scope = _split_scope(query.get("scope") or state.default_scope)
        ticket = state._open_consent(
            ConsentRequest(
                client_id=client_id,
                redirect_uri=redirect_uri,
                scope=scope,
                state=client_state,
                code_challenge=challenge,
                nonce=query.get("nonce"),
            )
        )
        body = _question(client_id, scope) + _buttons({"ticket": ticket}, AUTHORIZE_PATH)
        return _page("Allow access?", body)

    async def decide(request: Request) -> Response:
        try:
            form, _ = await _read_form(request)
        except OAuthError as exc:
            return _page("Bad request", f"<p>{escape(exc.description)}</p>", 400)
        ticket = _single(form, "ticket")
        consent = state._take_consent(ticket) if ticket else None
        if consent is None:
            return _page(
                "This request is over",
                "<p>It was already answered or never made. Start again from the application.</p>",
                400,
            )
        if _single(form, "decision") != "allow":
            return _redirect(
                consent.redirect_uri,
                {
                    "error": "access_denied",
                    "error_description": "the user denied the request",
                    "state": consent.state,
                },
            )
        code = state._issue_code(consent)
        return _redirect(consent.redirect_uri, {"code": code, "state": consent.state})

    async def device_page(request: Request) -> Response:
        user_code = request.query_params.get("user_code", "")
        found = state._device_request(user_code) if user_code else None
        if found is None:
            problem = "<p>That code is unknown, used or expired.</p>" if user_code else ""
            entry = (
                f'{problem}<form method=get action="{DEVICE_PAGE_PATH}">'
                "<label>Code shown on your device: <input name=user_code autofocus></label> "
                "<button type=submit>Continue</button></form>"
            )
            return _page("Connect a device", entry, 400 if user_code else 200)
        client_id, scope = found
        body = _question(client_id, scope) + _buttons({"user_code": user_code}, DEVICE_PAGE_PATH)
        return _page("Allow access?", body)

    async def device_decide(request: Request) -> Response:
        try:
            form, _ = await _read_form(request)
        except OAuthError as exc:
            return _page("Bad request", f"<p>{escape(exc.description)}</p>", 400)
        allow = _single(form, "decision") == "allow"
        if not state._decide_device(_single(form, "user_code") or "", allow):
            return _page("Unknown code", "<p>That code is unknown, used or expired.</p>", 400)
        if allow:
            return _page("Device connected", "<p>You may return to your device.</p>")
        return _page("Access denied", "<p>The device was not given access.</p>")

    return [
        Route(AUTHORIZE_PATH, authorize, methods=["GET"]),
        Route(AUTHORIZE_PATH, decide, methods=["POST"]),
        Route(DEVICE_PAGE_PATH, device_page, methods=["GET"]),
        Route(DEVICE_PAGE_PATH, device_decide, methods=["POST"]),
    ]
