"""The console's pages beyond the secrets table: a secret, runs, services, schedules, accounts,
health and providers (thin routes: parse, call the page modules and the domain code, render).

Every state-changing route takes `CheckedForm` (the session's CSRF token checked). What a page
offers follows the `Actor`'s checks; what a route does goes through the same domain code as its
API twin, which checks again. A value or a new API key is shown in the answer to its POST only,
never kept for a later page.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from app.auth.accounts import AccountStore
from app.auth.actor import ensure
from app.auth.permissions import Permission
from app.auth.schemas import ACCOUNT_NAME_PATTERN, ApiKeyCreate
from app.console import listings
from app.console.csrf import CheckedForm
from app.console.flow import PlacedErrors
from app.console.secret_page import secret_page, show_value
from app.console.service_page import (
    EditFormat,
    endpoint_views,
    may_see_services,
    run_endpoint,
    save_action,
)
from app.console.sessions import ConsoleUser, ConsoleUserDep, session_store
from app.console.templating import render
from app.console.trace import timeline
from app.dependencies import SessionDep
from app.errors import TokenfarmError
from app.providers.store import ProviderStore
from app.runs.log import RunLog
from app.runs.schemas import RUN_ID_PATTERN
from app.services.store import ServiceStore

router = APIRouter(include_in_schema=False)

Name = Annotated[str, Path(max_length=128)]
AccountName = Annotated[str, Path(pattern=ACCOUNT_NAME_PATTERN)]


def see_other(path: str) -> RedirectResponse:
    """The answer to a form post: look at this page next."""
    return RedirectResponse(path, status_code=303)


async def flash_to(
    request: Request,
    session: SessionDep,
    user: ConsoleUser,
    message: str,
    path: str,
    *,
    failed: bool = False,
) -> Response:
    """Keep the outcome for the next page and send the browser to `path`; a failed change is
    rolled back first, so only the message is stored."""
    if failed:
        await session.rollback()
    await session_store(request, session).flash(user.session_id, message)
    return see_other(path)


def problem_page(request: Request, user: ConsoleUser, exc: TokenfarmError) -> Response:
    """The domain's refusal as a page with its status (404 no such thing, 403 not allowed)."""
    titles = {403: "Not allowed", 404: "Not found", 429: "Too many requests"}
    headers = {}
    retry = getattr(exc, "retry_after_seconds", None)
    if retry is not None:
        headers["Retry-After"] = str(retry)
    return render(
        request, "error.html", user, status_code=exc.status_code, headers=headers,
        title=titles.get(exc.status_code, "Could not do that"), message=exc.message,
    )  # fmt: skip


def needs(request: Request, user: ConsoleUser, permission: str, what: str) -> Response:
    """A page the user may not see: which permission to ask for."""
    return render(
        request, "error.html", user, status_code=403, title="Not allowed",
        message=f"{what} needs the permission {permission!r}; ask an owner for it.",
    )  # fmt: skip


# --- a secret ---------------------------------------------------------------------------------


@router.get("/console/secrets/{name}")
async def secret_detail(
    name: Name, request: Request, user: ConsoleUserDep, session: SessionDep
) -> Response:
    """One secret: versions, bound endpoint, schedules, the 30-day plot, and Show value."""
    state = request.app.state
    try:
        page = await secret_page(state, session, user.actor, name, state.clock.now())
    except TokenfarmError as exc:
        return problem_page(request, user, exc)
    return render(request, "secret.html", user, page=page, value=None)


@router.post("/console/secrets/{name}/show")
async def secret_show_value(
    name: Name, request: Request, user: ConsoleUserDep, form: CheckedForm, session: SessionDep
) -> Response:
    """Show the current value once, to a user holding `secrets.read:NAME` (logged by name)."""
    state = request.app.state
    try:
        value = await show_value(state, request.scope, user.actor, name)
        page = await secret_page(state, session, user.actor, name, state.clock.now())
    except TokenfarmError as exc:
        return problem_page(request, user, exc)
    return render(request, "secret.html", user, page=page, value=value)


# --- runs -------------------------------------------------------------------------------------


@router.get("/console/runs")
async def runs_page(
    request: Request,
    user: ConsoleUserDep,
    session: SessionDep,
    status: Annotated[str | None, Query(max_length=32)] = None,
    secret: Annotated[str | None, Query(max_length=128)] = None,
    endpoint: Annotated[str | None, Query(max_length=130)] = None,
) -> Response:
    """The run log, newest first, filtered by status, secret and endpoint."""
    if not user.actor.can(Permission.RUNS_READ):
        return needs(request, user, Permission.RUNS_READ, "The run log")
    wanted = listings.RunFilter.of(status, secret, endpoint)
    runs = await listings.list_runs(session, wanted)
    return render(
        request, "runs.html", user, runs=runs, wanted=wanted, statuses=listings.RUN_STATUSES
    )


@router.get("/console/runs/{run_id}")
async def run_page(
    run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN)],
    request: Request,
    user: ConsoleUserDep,
    session: SessionDep,
) -> Response:
    """One run with its per-node trace as a timeline."""
    if not user.actor.can(Permission.RUNS_READ):
        return needs(request, user, Permission.RUNS_READ, "The run log")
    try:
        run = await RunLog(session).get(run_id)
    except TokenfarmError as exc:
        return problem_page(request, user, exc)
    rows = timeline([entry.model_dump() for entry in run.trace], run.duration_ms)
    return render(request, "run.html", user, run=run, rows=rows)


# --- services ---------------------------------------------------------------------------------


@router.get("/console/services")
async def services_page(request: Request, user: ConsoleUserDep, session: SessionDep) -> Response:
    """Every service and its endpoints."""
    if not may_see_services(user.actor):
        return needs(request, user, Permission.SERVICES_MANAGE, "Seeing services")
    services = await ServiceStore(session).list_all()
    return render(request, "services.html", user, services=services)


async def _service_page(
    request: Request,
    user: ConsoleUser,
    session: SessionDep,
    slug: str,
    *,
    editing: str | None = None,
    edit_text: str = "",
    edit_format: str = "json",
    edit_steps: list[object] | None = None,
    errors: PlacedErrors | None = None,
    status_code: int = 200,
) -> Response:
    store = ServiceStore(session)
    try:
        service = await store.describe(await store.get(slug))
    except TokenfarmError as exc:
        return problem_page(request, user, exc)
    return render(
        request, "service.html", user, status_code=status_code, service=service,
        endpoints=endpoint_views(user.actor, service), editing=editing, edit_text=edit_text,
        edit_format=edit_format, edit_steps=edit_steps, errors=errors or PlacedErrors(),
        can_edit=user.actor.can(Permission.SERVICES_MANAGE),
    )  # fmt: skip


@router.get("/console/services/{slug}")
async def service_page(
    slug: Name, request: Request, user: ConsoleUserDep, session: SessionDep
) -> Response:
    """A service: each endpoint's action as a flow, Run, and (for editors) an edit form."""
    if not may_see_services(user.actor):
        return needs(request, user, Permission.SERVICES_MANAGE, "Seeing services")
    return await _service_page(request, user, session, slug)


@router.post("/console/services/{slug}/{readable_id}/run")
async def service_run(
    slug: Name,
    readable_id: Name,
    request: Request,
    user: ConsoleUserDep,
    form: CheckedForm,
    session: SessionDep,
) -> Response:
    """Run an endpoint now, as the API runs it; then show the run (or the outcome)."""
    back = f"/console/services/{slug}"
    try:
        _, endpoint = await ServiceStore(session).get_endpoint(slug, readable_id)
        await session.commit()  # the run opens its own transactions
        outcome = await run_endpoint(
            request.app.state, request.scope, user.actor, slug, readable_id, endpoint.methods
        )
    except TokenfarmError as exc:
        if exc.status_code in (401, 403):
            return problem_page(request, user, exc)
        return await flash_to(request, session, user, f"{slug}/{readable_id}: {exc.message}", back)
    if outcome.error_body is None:
        message = f"{slug}/{readable_id}: run {outcome.run_id} succeeded"
    else:
        message = (
            f"{slug}/{readable_id}: run {outcome.run_id} failed ({outcome.error_body['message']})"
        )
    recorded = outcome.error_body is not None or endpoint.enable_log
    target = (
        f"/console/runs/{outcome.run_id}"
        if recorded and user.actor.can(Permission.RUNS_READ)
        else back
    )
    return await flash_to(request, session, user, message, target)


@router.post("/console/services/{slug}/{readable_id}/action")
async def service_save_action(
    slug: Name,
    readable_id: Name,
    request: Request,
    user: ConsoleUserDep,
    form: CheckedForm,
    session: SessionDep,
) -> Response:
    """Save an endpoint's edited action (JSON or YAML) through the services store; a refusal
    shows the submitted action with each problem at its node, and nothing is saved."""
    text = str(form.get("action", ""))
    fmt: EditFormat = "yaml" if form.get("format") == "yaml" else "json"
    try:
        refused = await save_action(session, user.actor, slug, readable_id, text, fmt)
    except TokenfarmError as exc:
        await session.rollback()
        return problem_page(request, user, exc)
    if refused is None:
        return await flash_to(
            request,
            session,
            user,
            f"{slug}/{readable_id}: action saved",
            f"/console/services/{slug}",
        )
    await session.rollback()
    return await _service_page(
        request, user, session, slug, editing=readable_id, edit_text=text, edit_format=fmt,
        edit_steps=list(refused.steps), errors=refused.errors, status_code=422,
    )  # fmt: skip


# --- schedules, accounts, health, providers ---------------------------------------------------


@router.get("/console/schedules")
async def schedules_page(request: Request, user: ConsoleUserDep, session: SessionDep) -> Response:
    """Every schedule with its next run."""
    if not user.actor.can(Permission.SCHEDULES_MANAGE):
        return needs(request, user, Permission.SCHEDULES_MANAGE, "Seeing schedules")
    schedules = await listings.list_schedules(session)
    return render(request, "schedules.html", user, schedules=schedules)


async def _accounts_page(
    request: Request,
    user: ConsoleUser,
    session: SessionDep,
    *,
    new_key: object = None,
    status_code: int = 200,
) -> Response:
    store = AccountStore(session, request.app.state.passwords)
    accounts = await listings.list_accounts(store)
    return render(
        request, "accounts.html", user, status_code=status_code, accounts=accounts,
        new_key=new_key,
    )  # fmt: skip


@router.get("/console/accounts")
async def accounts_page(request: Request, user: ConsoleUserDep, session: SessionDep) -> Response:
    """Users, roles, service accounts and their API keys."""
    if not user.actor.can(Permission.ACCOUNTS_MANAGE):
        return needs(request, user, Permission.ACCOUNTS_MANAGE, "Managing accounts")
    return await _accounts_page(request, user, session)


@router.post("/console/accounts/service-accounts/{name}/api-keys")
async def create_api_key(
    name: AccountName,
    request: Request,
    user: ConsoleUserDep,
    form: CheckedForm,
    session: SessionDep,
    key_name: Annotated[str, Form(alias="key_name", max_length=64)] = "",
) -> Response:
    """Make an API key; this answer shows it once (it is stored hashed, never shown again)."""
    back = "/console/accounts"
    try:
        ensure(user.actor, Permission.ACCOUNTS_MANAGE)
        data = ApiKeyCreate.model_validate({"name": key_name.strip()})
    except TokenfarmError as exc:
        return problem_page(request, user, exc)
    except ValueError:
        message = f"{name}: a key name is 1-64 letters, digits, '.', '_' or '-' (got {key_name!r})"
        return await flash_to(request, session, user, message, back)
    store = AccountStore(session, request.app.state.passwords)
    try:
        created = await store.create_api_key(await store.service_account(name), data, user.actor)
        await session.commit()
    except TokenfarmError as exc:
        return await flash_to(request, session, user, f"{name}: {exc.message}", back, failed=True)
    return await _accounts_page(
        request, user, session, new_key={"account": name, "name": created.name,
                                         "key": created.key},
        status_code=201,
    )  # fmt: skip


@router.post("/console/accounts/service-accounts/{name}/api-keys/{key}/revoke")
async def revoke_api_key(
    name: AccountName,
    key: AccountName,
    request: Request,
    user: ConsoleUserDep,
    form: CheckedForm,
    session: SessionDep,
) -> Response:
    """Revoke an API key: it stops working at once."""
    back = "/console/accounts"
    try:
        ensure(user.actor, Permission.ACCOUNTS_MANAGE)
    except TokenfarmError as exc:
        return problem_page(request, user, exc)
    store = AccountStore(session, request.app.state.passwords)
    try:
        await store.revoke_api_key(await store.service_account(name), key, user.actor)
    except TokenfarmError as exc:
        return await flash_to(request, session, user, f"{name}: {exc.message}", back, failed=True)
    return await flash_to(request, session, user, f"{name}: key {key} revoked", back)


@router.get("/console/health")
async def health_page(request: Request, user: ConsoleUserDep, session: SessionDep) -> Response:
    """Readiness (as `/readyz`), secrets that need a look, and the latest failed runs."""
    actor = user.actor
    page = await listings.health(
        request.app.state, session,
        secrets=actor.can(Permission.SECRETS_MANAGE), runs=actor.can(Permission.RUNS_READ),
    )  # fmt: skip
    return render(request, "health.html", user, health=page)


@router.get("/console/providers")
async def providers_page(request: Request, user: ConsoleUserDep, session: SessionDep) -> Response:
    """The OAuth providers tokenfarm knows."""
    if not user.actor.can(Permission.PROVIDERS_MANAGE):
        return needs(request, user, Permission.PROVIDERS_MANAGE, "Seeing providers")
    providers = await ProviderStore(session).list_all()
    return render(request, "providers.html", user, providers=providers)
