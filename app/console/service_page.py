"""What the services pages show, running an endpoint, and saving an edited action.

Services are seen and edited with `services.manage`, as their API routes are; an endpoint is run
by whoever `Actor.can_run` it, through the API's run path (rate limit, `ensure_can_run`, the
runner). An edit goes through `ServiceStore.replace` like `PUT /v1/services/{slug}`, so every
check of an action (its schema, its bindings, where its secrets go, what its author may use)
happens in one place; its refusals come back as (path, message) pairs and are drawn at the
offending node of the flow (`app/console/flow.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.actor import Actor, ensure
from app.auth.permissions import Permission
from app.configuration.loader import DocumentInvalid, compose
from app.console.flow import FlowStep, PlacedErrors, action_flow, place_errors
from app.errors import InvalidInput, TokenfarmError
from app.pipeline.context import RequestData
from app.ratelimit import RouteKind
from app.runs.record import RunOutcome
from app.runs.refresh import ensure_can_run
from app.schemas import describe_error, format_location
from app.services.schemas import ServiceBody, ServiceRead
from app.services.store import ServiceStore

EditFormat = Literal["json", "yaml"]


@dataclass(frozen=True)
class EndpointView:
    """One endpoint of a service page: its action as a flow, and what the user may do."""

    readable_id: str
    name: str
    description: str
    methods: list[str]
    enable_log: bool
    steps: list[FlowStep]
    can_run: bool
    action_json: str  # the stored action, for the edit form
    action_yaml: str


def may_see_services(actor: Actor) -> bool:
    """The services pages show what `GET /v1/services` shows, to the same people."""
    return actor.can(Permission.SERVICES_MANAGE)


def endpoint_views(actor: Actor, service: ServiceRead) -> list[EndpointView]:
    """Each endpoint of a service with its flow and the user's Run permission."""
    return [
        EndpointView(
            readable_id=endpoint.readable_id,
            name=endpoint.name,
            description=endpoint.description,
            methods=list(endpoint.methods),
            enable_log=endpoint.enable_log,
            steps=action_flow(endpoint.action),
            can_run=actor.can_run(service.slug, endpoint.readable_id),
            action_json=json.dumps(endpoint.action, indent=2, ensure_ascii=False),
            action_yaml=yaml.safe_dump(endpoint.action, sort_keys=False, allow_unicode=True),
        )
        for endpoint in service.endpoints
    ]


async def run_endpoint(
    state: Any, scope: Any, actor: Actor, slug: str, readable_id: str, methods: list[str]
) -> RunOutcome:
    """Run an endpoint as `POST /api/services/{slug}/{readable_id}` runs it (no request data):
    the same rate limit, permission check and runner."""
    await state.rate_limiter.check(scope, RouteKind.ENDPOINT, actor)
    ensure_can_run(actor, slug, readable_id)
    method = "POST" if "POST" in methods else methods[0]
    outcome: RunOutcome = await state.runner.run_endpoint(
        slug, readable_id, actor=actor, trigger="api", method=method, request=RequestData()
    )
    return outcome


@dataclass
class EditOutcome:
    """A refused edit: the submitted action as a flow with its errors placed on it."""

    steps: list[FlowStep]
    errors: PlacedErrors


def parse_action_text(text: str, fmt: EditFormat) -> Any:
    """The submitted action as data, or `InvalidInput` saying where the text breaks."""
    if fmt == "json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"not valid JSON: {exc}") from None
    try:
        data, _ = compose(text, "action")
    except DocumentInvalid as exc:
        raise InvalidInput("; ".join(str(p).removeprefix("action:") .strip() for p in exc.problems)
                           ) from None  # fmt: skip
    return data


async def save_action(
    session: AsyncSession,
    actor: Actor,
    slug: str,
    readable_id: str,
    text: str,
    fmt: EditFormat,
) -> EditOutcome | None:
    """Replace one endpoint's action through the services store; None when saved, else the
    submitted action drawn with its problems (nothing is written then)."""
    ensure(actor, Permission.SERVICES_MANAGE)
    store = ServiceStore(session)
    service = await store.get(slug)
    current = await store.describe(service)
    index = next((i for i, e in enumerate(current.endpoints) if e.readable_id == readable_id), None)
    if index is None:
        raise InvalidInput(f"service {slug!r} has no endpoint {readable_id!r}")
    prefix = f"endpoints[{index}].action"
    try:
        action = parse_action_text(text, fmt)
    except InvalidInput as exc:
        return EditOutcome([], PlacedErrors(unplaced=[exc.message]))
    steps = action_flow(action, prefix)
    body = current.model_dump(include={"name", "description", "variables", "endpoints"})
    body["endpoints"][index]["action"] = action
    try:
        data = ServiceBody.model_validate(body)
    except ValidationError as exc:
        errors = [(format_location(tuple(e["loc"])), describe_error(dict(e))) for e in exc.errors()]
        return EditOutcome(steps, place_errors(steps, errors))
    try:
        await store.replace(service, data, actor)
    except TokenfarmError as exc:  # an action refused, a permission the author lacks
        return EditOutcome(steps, place_errors(steps, refusal_paths(exc)))
    return None


def refusal_paths(exc: TokenfarmError) -> list[tuple[str, str]]:
    """(path, message) of each problem a store's refusal names: a `PermissionDenied` of
    `ensure_author_may_save` lists every missing permission at its node, an `ActionInvalid`
    carries its path; anything else is one problem without a place."""
    path = str(exc.extra.get("path") or "")
    problem = exc.message.removeprefix(f"{path}: ") if path else exc.message
    listed = exc.extra.get("errors")
    if isinstance(listed, list) and all(
        isinstance(item, dict) and "permission" in item for item in listed
    ):
        first = (path, problem)
        rest = [
            (str(item.get("path", "")), f"saving this needs the permission {item['permission']!r}")
            for item in listed
            if str(item.get("path", "")) != path
        ]
        return [first, *rest]
    return [(path, problem)]
