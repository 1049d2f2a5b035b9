"""The console's HTML routes (thin: parse, call the domain code the API calls, render).

Every state-changing route takes `CheckedForm` (the session's CSRF token checked) and ends in a
303 back to a page, with the outcome kept as the session's flash message.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from app.auth.accounts import AccountStore
from app.auth.actor import ensure
from app.auth.permissions import Permission
from app.auth.throttle import LoginThrottle
from app.clients import client_address
from app.connect.start import connect_start
from app.console.csrf import CheckedForm
from app.console.sessions import (
    LOGIN_PATH,
    ConsoleUser,
    ConsoleUserDep,
    clear_session_cookie,
    session_store,
    set_session_cookie,
)
from app.console.templating import render
from app.console.views import (
    STATUSES,
    may_list_secrets,
    previous_version,
    secret_row,
)
from app.dependencies import SessionDep
from app.errors import NotAuthenticated, PermissionDenied, TokenfarmError, TooManyAttempts
from app.middleware import received_at
from app.ratelimit import RouteKind
from app.runs.refresh import finish_refresh, start_refresh
from app.schemas import describe_error
from app.secrets.schemas import SecretValueWrite
from app.secrets.store import SecretStore

router = APIRouter(include_in_schema=False)
SECRETS_PATH = "/console/secrets"


def see_other(path: str) -> RedirectResponse:
    """The answer to a form post: look at this page next."""
    return RedirectResponse(path, status_code=303)


@router.get("/")
async def home() -> RedirectResponse:
    """The console's front page is the secrets page (which sends strangers to log in)."""
    return RedirectResponse(SECRETS_PATH, status_code=307)


@router.get("/console")
async def console_home() -> RedirectResponse:
    """`/console` is the secrets page too."""
    return RedirectResponse(SECRETS_PATH, status_code=307)


# --- login and logout -----------------------------------------------------------------------


@router.get(LOGIN_PATH)
async def login_page(request: Request) -> Response:
    """The login form."""
    return render(request, "login.html", None, email="", problem=None)


@router.post(LOGIN_PATH)
async def login(
    request: Request,
    session: SessionDep,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Check an email and password (throttled like `POST /auth/token`) and start a session."""
    if not email or not password:
        return render(
            request, "login.html", None, status_code=400, email=email,
            problem="Enter your email and your password.",
        )  # fmt: skip
    throttle: LoginThrottle = request.app.state.login_throttle
    accounts = AccountStore(session, request.app.state.passwords)
    try:
        with throttle.attempt(email, client_address(request.scope, throttle.trusted)):
            user = await accounts.login(email, password)
    except TooManyAttempts as exc:
        wait = exc.retry_after_seconds
        return render(
            request, "login.html", None, status_code=429, email=email,
            headers={"Retry-After": str(wait)},
            problem=f"Too many failed logins. Wait {wait} seconds, then try again.",
        )  # fmt: skip
    except NotAuthenticated:
        return render(
            request, "login.html", None, status_code=401, email=email,
            problem="Wrong email or password (or the account is disabled).",
        )  # fmt: skip
    raw = await session_store(request, session).start(user)
    response = see_other(SECRETS_PATH)
    set_session_cookie(response, raw, request.app.state.settings)
    return response


@router.post("/console/logout")
async def logout(
    request: Request, user: ConsoleUserDep, form: CheckedForm, session: SessionDep
) -> Response:
    """End this session."""
    await session_store(request, session).end(user.session_id)
    response = see_other(LOGIN_PATH)
    clear_session_cookie(response, request.app.state.settings)
    return response


# --- secrets ----------------------------------------------------------------------------------


@router.get(SECRETS_PATH)
async def secrets_page(
    request: Request,
    user: ConsoleUserDep,
    session: SessionDep,
    status: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    """Every secret: status, version, expiry, next refresh, failures, and the user's actions."""
    wanted = status if status in STATUSES else None
    rows = []
    allowed = may_list_secrets(user.actor)
    if allowed:
        state = request.app.state
        store = SecretStore(session, state.keyring, state.settings)
        now = state.clock.now()
        for secret in await store.list_all():
            if wanted is not None and secret.status != wanted:
                continue
            versions = await store.versions(await store.get(secret.name))
            rows.append(secret_row(user.actor, secret, previous_version(versions), now))
    return render(
        request, "secrets.html", user, rows=rows, allowed=allowed, statuses=STATUSES,
        status=wanted,
    )  # fmt: skip


async def _flash_and_return(
    request: Request, session: SessionDep, user: ConsoleUser, message: str, *, failed: bool = False
) -> Response:
    """Keep the outcome for the next page and send the browser there; a failed change is
    rolled back first, so only the message is stored."""
    if failed:
        await session.rollback()
    await session_store(request, session).flash(user.session_id, message)
    return see_other(SECRETS_PATH)


def refused(request: Request, user: ConsoleUser, exc: TokenfarmError) -> Response:
    """A 403 page: the user may not do this (the form should not have been offered)."""
    return render(request, "error.html", user, status_code=403, title="Not allowed",
                  message=exc.message)  # fmt: skip


@router.post(SECRETS_PATH + "/{name}/refresh")
async def refresh_secret(
    name: str, request: Request, user: ConsoleUserDep, form: CheckedForm, session: SessionDep
) -> Response:
    """Refresh a secret now: the same checks, rate limit and single flight as
    `GET /refresh/{secret}`."""
    state = request.app.state
    try:
        await state.rate_limiter.check(request.scope, RouteKind.REFRESH, user.actor)
        arrived = received_at(request.scope)
        target = await start_refresh(
            state.runner, user.actor, name, force=False, received_at=arrived
        )
        answer = await finish_refresh(
            state.runner, user.actor, name, target, force=False, received_at=arrived
        )
    except (NotAuthenticated, PermissionDenied) as exc:
        return refused(request, user, exc)
    except TokenfarmError as exc:
        return await _flash_and_return(request, session, user, f"{name}: {exc.message}")
    result = answer.result
    if result.error is not None:
        message = f"{name}: refresh failed ({result.error.message})"
    else:
        message = f"{name} refreshed: now version {result.version}"
    return await _flash_and_return(request, session, user, message)


@router.get(SECRETS_PATH + "/{name}/connect")
async def connect_secret(
    name: str, request: Request, user: ConsoleUserDep, session: SessionDep
) -> Response:
    """Connect (or reconnect) a connected secret: the connect flow's own start
    (`secrets.connect:NAME`), answered with the redirect to the provider's consent page.

    A link, not a form: the page's CSP allows forms to post only to the console, and a form
    whose answer redirects to the provider counts as posting there. Another site can't start a
    flow in the user's name: the browser says where a navigation came from (`Sec-Fetch-Site`),
    and the session cookie is SameSite=Lax."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        message = "Start connecting from the console's own Secrets page."
        return render(request, "error.html", user, status_code=403, title="Not allowed",
                      message=message)  # fmt: skip
    state = request.app.state
    try:
        return await connect_start(
            session,
            state.keyring,
            state.settings,
            name,
            user.actor,
            outbound=state.runner.outbound,
        )
    except (NotAuthenticated, PermissionDenied) as exc:
        return refused(request, user, exc)
    except TokenfarmError as exc:
        await session.rollback()
        return await _flash_and_return(request, session, user, f"{name}: {exc.message}")


@router.post(SECRETS_PATH + "/{name}/value")
async def set_value(
    name: str, request: Request, user: ConsoleUserDep, form: CheckedForm, session: SessionDep
) -> Response:
    """Set a value by hand (a new version), as `PUT /v1/secrets/{name}/value`."""
    try:
        ensure(user.actor, Permission.SECRETS_MANAGE)
    except TokenfarmError as exc:
        return refused(request, user, exc)
    try:
        data = SecretValueWrite.model_validate({"value": form.get("value", "")})
    except ValidationError as exc:
        # Only the problem, never the input (it is a secret value).
        problem = describe_error(dict(exc.errors()[0]))
        return await _flash_and_return(request, session, user, f"{name}: {problem}")
    state = request.app.state
    store = SecretStore(session, state.keyring, state.settings)
    try:
        written = await store.set_value(
            await store.get(name), data.value, actor=user.actor.label, source="manual"
        )
    except TokenfarmError as exc:
        message = f"{name}: {exc.message}"
        return await _flash_and_return(request, session, user, message, failed=True)
    return await _flash_and_return(
        request, session, user, f"{name}: value set, now version {written.version}"
    )


@router.post(SECRETS_PATH + "/{name}/rollback")
async def rollback(
    name: str, request: Request, user: ConsoleUserDep, form: CheckedForm, session: SessionDep
) -> Response:
    """Make the version before the current one current again (as a new version)."""
    try:
        ensure(user.actor, Permission.SECRETS_MANAGE)
    except TokenfarmError as exc:
        return refused(request, user, exc)
    state = request.app.state
    store = SecretStore(session, state.keyring, state.settings)
    try:
        secret = await store.get(name)
        version = previous_version(await store.versions(secret))
        if version is None:
            return await _flash_and_return(
                request, session, user, f"{name}: there is no earlier version to roll back to"
            )
        written = await store.rollback(secret, version, None, user.actor.label)
    except TokenfarmError as exc:
        message = f"{name}: {exc.message}"
        return await _flash_and_return(request, session, user, message, failed=True)
    return await _flash_and_return(
        request, session, user,
        f"{name}: rolled back to version {version}, now version {written.version}",
    )  # fmt: skip
