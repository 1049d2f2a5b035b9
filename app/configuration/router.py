"""`POST /v1/apply`: config as code for CI pipelines, the same plan and rules as `tokenfarm apply`.

On the API, `value_from: {env: NAME}` reads the request's own `env` map (JSON form), never the
server's environment — which holds the server's keys (TOKENFARM_ENCRYPTION_KEYS,
TOKENFARM_JWT_SECRET) that a caller could otherwise copy into a secret and read back. For the
same reason `value_from: {file: …}` is refused here: files are read only by the command line.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth.actor import Actor, refuse
from app.auth.dependencies import CurrentActor
from app.auth.permissions import Permission
from app.configuration.apply import apply_document
from app.configuration.document import MANAGE_PERMISSIONS
from app.configuration.loader import MAX_DOCUMENT_BYTES, load
from app.configuration.schemas import DOCUMENT_EXAMPLE, ApplyRequest, ApplyResult
from app.configuration.values import ValueSource
from app.dependencies import KeyringDep, SessionDep, SettingsDep
from app.errors import InvalidInput
from app.schemas import ErrorResponse

router = APIRouter(tags=["configuration"])
BODY_FILE = "<body>"
MANAGE_ORDER = [
    Permission.SECRETS_MANAGE,
    Permission.SERVICES_MANAGE,
    Permission.ACCOUNTS_MANAGE,
    Permission.SCHEDULES_MANAGE,
    Permission.PROVIDERS_MANAGE,
]
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
# The JSON form carries the document and the values of its env references.
MAX_BODY_BYTES = 2 * MAX_DOCUMENT_BYTES
FILE_REFUSED = (
    "value_from: {file: …} is read only by the command line (tokenfarm apply -f FILE); through "
    'the API, use {env: NAME} and send the value in the JSON form\'s "env"'
)
RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        401: "No credential",
        403: "A permission is missing: the manage permission of a section the document declares, "
        "`act_as` for an account it names, or a permission a role would grant",
        409: "A store refused a change (the message names the object); nothing was changed",
        413: "The body is larger than 2 MiB",
        415: "The body is neither YAML (application/yaml, text/plain) nor the JSON form",
        422: "The document is invalid: `errors` lists each problem with its `line` and field "
        "`path`; nothing was changed",
    }.items()
}
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/yaml": {
                "schema": {"type": "string", "description": "The document."},
                "example": DOCUMENT_EXAMPLE,
            },
            "text/plain": {"schema": {"type": "string", "description": "The document."}},
            "application/json": {"schema": ApplyRequest.model_json_schema()},
        },
    }
}


def ensure_may_apply(actor: Actor) -> None:
    """Refuse at once a caller without any manage permission (before reading the body)."""
    permissions = sorted(set(MANAGE_PERMISSIONS.values()), key=MANAGE_ORDER.index)
    if not any(actor.can(permission) for permission in permissions):
        others = ", ".join(permissions[1:])
        refuse(
            actor,
            permissions[0],
            f" (or {others}: each section of the document needs its own)",
        )


async def _read_body(request: Request) -> tuple[str, dict[str, str]]:
    """The document and the request's env: YAML as it is, or the JSON form (its size is
    bounded before it is read, by app/middleware.py's `BodyLimitMiddleware`)."""
    body = await request.body()
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media in YAML_TYPES:
        try:
            return body.decode("utf-8"), {}
        except UnicodeDecodeError:
            raise InvalidInput("the document is not UTF-8 text") from None
    if media == "application/json":
        try:
            data = json.loads(body)
        except ValueError:
            raise InvalidInput("the request body is not valid JSON") from None
        try:
            form = ApplyRequest.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
            ) from None
        return form.document, form.env
    raise StarletteHTTPException(
        415,
        "send the document as application/yaml (or text/plain), or as application/json "
        '{"document": "<yaml>", "env": {...}}',
    )


@router.post(
    "/v1/apply", responses=RESPONSES, openapi_extra=REQUEST_BODY, response_model=ApplyResult
)
async def apply_configuration(
    request: Request,
    actor: CurrentActor,
    session: SessionDep,
    keyring: KeyringDep,
    settings: SettingsDep,
    dry_run: bool = Query(False, description="Plan and check only: nothing is changed."),
    prune: bool = Query(False, description="Delete what the document's sections no longer name."),
) -> ApplyResult:
    """Apply a configuration document (YAML) in one transaction; answers the plan.

    Needs the manage permission of each section the document declares (`secrets.manage`,
    `services.manage`, `accounts.manage` for roles and service accounts, `schedules.manage`,
    `providers.manage`) and `act_as:ACCOUNT` for every `run_as`/`refresh_as`. `value_from: {env:
    NAME}` reads the JSON form's `env`; files are refused here. With `dry_run` the plan is
    carried out and rolled back, so an answer of 200 means the apply would succeed.
    """
    ensure_may_apply(actor)
    text, env = await _read_body(request)
    loaded = load(text, BODY_FILE)
    values = ValueSource(
        env=env,
        base_dir=None,
        env_label='the JSON form\'s "env" entry',
        file_refusal=FILE_REFUSED,
    )
    plan = await apply_document(
        session, keyring, settings, loaded, actor=actor, values=values, prune=prune
    )
    if dry_run:
        await session.rollback()
    return ApplyResult.of(plan, dry_run=dry_run)
