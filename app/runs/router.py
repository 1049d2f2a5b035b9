"""HTTP routes that run endpoints (`/api/services/…`, `/refresh/{secret}`) and read the run log."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.types import Scope

from app.auth.actor import Actor
from app.auth.dependencies import CurrentActor, require
from app.auth.permissions import Permission
from app.dependencies import KeyringDep, RunnerDep, SessionDep, SettingsDep
from app.errors import InvalidInput, RefreshBackingOff, TokenfarmError
from app.fastpath import FastPath
from app.handlers import retry_after
from app.middleware import received_at
from app.pipeline.context import RequestData
from app.pipeline.schemas import SECRET_NAME_PATTERN
from app.ratelimit import RouteKind
from app.runs.log import RunLog
from app.runs.recovery import Recovery
from app.runs.refresh import ensure_can_run, finish_refresh, run_fields, start_refresh
from app.runs.runner import Runner, RunOutcome
from app.runs.schemas import (
    RUN_ID_PATTERN,
    RecoveryResult,
    RefreshResult,
    RunDetail,
    RunResult,
    RunStatus,
    RunSummary,
    RunTrigger,
)
from app.schemas import ErrorResponse
from app.services.schemas import READABLE_ID_PATTERN, SLUG_PATTERN

router = APIRouter(tags=["runs"])
# The caller's own credentials are never handed to an action.
PRIVATE_HEADERS = {"authorization", "cookie", "x-api-key"}
RUN_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        403: "A permission is missing (nothing was called)",
        404: "No such service, endpoint or secret",
        405: "The endpoint does not accept this method",
        409: "A target secret is locked, missing, not environment-specific or `needs_reauth`, "
        "or changed during the run (a failed run also carries `run_id` and `status`)",
        502: "The upstream failed or answered something unusable (with `run_id` and `status`)",
        429: "A rate limit was reached, per caller or per client address (`rate_limited`; "
        "`Retry-After` says when to try again; nothing was called)",
        504: "The upstream timed out (with `run_id` and `status`)",
    }.items()
}
REFRESH_RESPONSES: dict[int | str, dict[str, Any]] = {
    **RUN_RESPONSES,
    503: {
        "model": ErrorResponse,
        "description": "The secret's refreshes keep failing: on-demand refreshes wait out its "
        "backoff (`refresh_backoff`; `Retry-After` says when; nothing was called)",
    },
}


async def _request_data(request: Request) -> RequestData:
    """The caller's query, JSON or form body and headers, for `request.*` bindings."""
    body: Any = None
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    if raw and "json" in content_type:
        try:
            body = json.loads(raw)
        except ValueError:
            raise InvalidInput("the request body is not valid JSON") from None
    elif raw and "application/x-www-form-urlencoded" in content_type:
        body = dict((await request.form()).items())
    headers = {k: v for k, v in request.headers.items() if k.lower() not in PRIVATE_HEADERS}
    return RequestData(query=dict(request.query_params), body=body, headers=headers)


def _answer(result: RunResult, outcome: RunOutcome) -> JSONResponse:
    """The result as its documented schema renders it, with the run's status code."""
    return JSONResponse(
        result.model_dump(mode="json"),
        status_code=outcome.http_status,
        headers=retry_after(outcome.error),
    )


SlugPath = Annotated[str, Path(pattern=SLUG_PATTERN, examples=["oauth"])]
ReadableIdPath = Annotated[str, Path(pattern=READABLE_ID_PATTERN, examples=["refresh-token"])]
SecretPath = Annotated[str, Path(pattern=SECRET_NAME_PATTERN, examples=["ACCESS_TOKEN"])]


async def run_endpoint(
    slug: SlugPath,
    readable_id: ReadableIdPath,
    request: Request,
    actor: CurrentActor,
    runner: RunnerDep,
) -> JSONResponse:
    """Run an endpoint's action; needs `services.run:SLUG` (or `SLUG/ID`)."""
    await request.app.state.rate_limiter.check(request.scope, RouteKind.ENDPOINT, actor)
    ensure_can_run(actor, slug, readable_id)
    data = await _request_data(request)
    outcome = await runner.run_endpoint(
        slug, readable_id, actor=actor, trigger="api", method=request.method, request=data
    )
    return _answer(RunResult.model_validate(run_fields(outcome)), outcome)


for _method in ("GET", "POST", "PUT"):
    router.add_api_route(
        "/api/services/{slug}/{readable_id}",
        run_endpoint,
        methods=[_method],
        response_model=RunResult,
        responses=RUN_RESPONSES,
        operation_id=f"run_endpoint_{_method.lower()}",
        summary=f"Run an endpoint ({_method})",
    )


@router.get("/refresh/{secret}", response_model=RefreshResult, responses=REFRESH_RESPONSES)
async def refresh_secret(
    secret: SecretPath,
    request: Request,
    actor: CurrentActor,
    runner: RunnerDep,
    force: bool = Query(
        False,
        description="Run even though a target is `needs_reauth` (after fixing the grant some "
        "other way than setting a value); with `secrets.manage`, also while the secret's "
        "refreshes back off after failing.",
    ),
) -> JSONResponse:
    """Run the secret's `refresh_endpoint`; answers the run and the secret's new version.

    Concurrent calls share one run. A secret whose grant was refused (`needs_reauth`) answers
    409 without calling anything until a value is set by hand or `force=true` is passed. A
    secret whose refreshes keep failing answers 503 with `Retry-After` until its backoff has
    passed (as expiry-driven refreshes wait), unless someone holding `secrets.manage` passes
    `force=true`.
    """
    await request.app.state.rate_limiter.check(request.scope, RouteKind.REFRESH, actor)
    arrived = received_at(request.scope)
    target = await start_refresh(runner, actor, secret, force=force, received_at=arrived)
    answer = await finish_refresh(runner, actor, secret, target, force=force, received_at=arrived)
    return _answer(answer.result, answer.outcome)


async def refresh_secret_fast(
    scope: Scope, actor: Actor, params: dict[str, str]
) -> JSONResponse | None:
    """`refresh_secret`'s fast path: a plain refresh (no `force`), as the route runs it. An error
    before the run (unknown secret, a missing permission) hands the request to the route, which
    checks again and answers it; nothing was called. A rate limit or a backoff is answered here
    (the route would not count the request again)."""
    state = scope["app"].state
    await state.rate_limiter.check(scope, RouteKind.REFRESH, actor)
    runner: Runner = state.runner
    secret = params["secret"]
    arrived = received_at(scope)
    try:
        target = await start_refresh(runner, actor, secret, force=False, received_at=arrived)
    except RefreshBackingOff:
        raise  # answered here, as the route answers it (once asked, once counted)
    except TokenfarmError:
        return None
    answer = await finish_refresh(runner, actor, secret, target, force=False, received_at=arrived)
    return _answer(answer.result, answer.outcome)


FAST_PATHS = (FastPath(refresh_secret, refresh_secret_fast),)


@router.get("/v1/runs", dependencies=[Depends(require(Permission.RUNS_READ))])
async def list_runs(
    session: SessionDep,
    service: str | None = Query(
        None, pattern=SLUG_PATTERN, description="Only runs of this service slug."
    ),
    endpoint: str | None = Query(
        None, pattern=READABLE_ID_PATTERN, description="Only runs of this endpoint readable_id."
    ),
    secret: str | None = Query(
        None, pattern=SECRET_NAME_PATTERN, description="Only runs that targeted this secret."
    ),
    status: RunStatus | None = None,
    trigger: RunTrigger | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> list[RunSummary]:
    """The run log, newest first: every failed run and every run of an endpoint with enable_log."""
    return await RunLog(session).list_all(
        service=service,
        endpoint=endpoint,
        secret=secret,
        status=status,
        trigger=trigger,
        limit=limit,
    )


@router.get(
    "/v1/runs/{run_id}",
    dependencies=[Depends(require(Permission.RUNS_READ))],
    responses={404: {"description": "No such run in the log"}},
)
async def get_run(
    run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN, description="A run's `run_id`.")],
    session: SessionDep,
) -> RunDetail:
    """One run with its per-node trace (every secret value redacted)."""
    return await RunLog(session).get(run_id)


@router.post(
    "/v1/runs/{run_id}/recover",
    dependencies=[Depends(require(Permission.SECRETS_MANAGE))],
    responses={
        404: {"model": ErrorResponse, "description": "No such run in the log"},
        409: {
            "model": ErrorResponse,
            "description": "Nothing to recover, the run may still be in flight, or a secret "
            "changed since the run began (pass force=true to overwrite it)",
        },
    },
)
async def recover_run(
    run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN, description="A run's `run_id`.")],
    actor: CurrentActor,
    session: SessionDep,
    keyring: KeyringDep,
    settings: SettingsDep,
    force: bool = Query(
        False, description="Write even over a secret that changed since the run began."
    ),
) -> RecoveryResult:
    """Write what a run's upstream answered when storing it failed; needs `secrets.manage`."""
    return await Recovery(session, keyring, settings).recover(
        run_id, actor=actor.label, force=force
    )
