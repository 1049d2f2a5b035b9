"""What the page of one secret shows, and showing its value once to a user who may read it.

Metadata, versions and the schedules that touch the secret need `secrets.manage`, as their API
routes do; the refreshes in the plot need `runs.read`; the value needs `secrets.read:NAME` and
goes through the API's own value read (`app/runs/refresh.py:read_value`, after the same rate
limit and permission check), so the console is no second way in. Permissions are asked of the
`Actor`, never re-implemented.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.actor import Actor, ensure
from app.auth.permissions import Permission, secret_read
from app.console.plot import render_plot
from app.errors import TokenfarmError
from app.pipeline.analysis import compile_action
from app.ratelimit import RouteKind
from app.runs.log import RunLog
from app.runs.refresh import read_value
from app.runs.schemas import RunSummary
from app.schedules.schemas import ScheduleRead
from app.schedules.store import ScheduleStore
from app.secrets.schemas import SecretRead, SecretVersionRead
from app.secrets.store import SecretStore
from app.services.store import ServiceStore

# Who saw a value through the console, and when (the access log has the path only); never the
# value itself.
audit = logging.getLogger("tokenfarm.console.audit")

# Runs looked at for the plot: the newest this many of the secret's runs.
PLOT_RUNS = 2000


@dataclass(frozen=True)
class SecretPage:
    """Everything the secret page shows (never a value)."""

    name: str
    secret: SecretRead | None  # None: the user may not see the metadata (no secrets.manage)
    versions: list[SecretVersionRead]
    schedules: list[ScheduleRead]
    plot_svg: str | None
    plot_without_runs: bool  # the user may not read runs, so the plot shows versions only
    can_show_value: bool
    can_refresh: bool


async def secret_page(
    state: Any, session: AsyncSession, actor: Actor, name: str, now: datetime
) -> SecretPage:
    """The page of secret `name` as `actor` may see it; NotFound when there is no such secret
    and the user may see metadata (a reader without it learns nothing from a 404 either way)."""
    can_show = actor.can(secret_read(name))
    if not actor.can(Permission.SECRETS_MANAGE):
        return SecretPage(name, None, [], [], None, False, can_show, False)
    store = SecretStore(session, state.keyring, state.settings)
    row = await store.get(name)
    secret = await store.describe(row)
    versions = await store.versions(row)
    schedules = await schedules_touching(session, name)
    runs: list[RunSummary] = []
    may_read_runs = actor.can(Permission.RUNS_READ)
    if may_read_runs:
        runs = await RunLog(session).list_all(secret=name, limit=PLOT_RUNS)
    plot = render_plot(name, runs, versions, now)
    can_refresh = _may_refresh(actor, secret)
    return SecretPage(name, secret, versions, schedules, plot, not may_read_runs, can_show,
                      can_refresh)  # fmt: skip


def _may_refresh(actor: Actor, secret: SecretRead) -> bool:
    """A refresh runs the bound endpoint, which needs `services.run` of it."""
    if not secret.refresh_endpoint:
        return False
    slug, readable_id = secret.refresh_endpoint.split("/", 1)
    return actor.can_run(slug, readable_id)


async def schedules_touching(session: AsyncSession, name: str) -> list[ScheduleRead]:
    """Schedules whose endpoint's action reads or writes the secret."""
    services = ServiceStore(session)
    touching = []
    for schedule in await ScheduleStore(session).list_all():
        try:
            _, endpoint = await services.get_endpoint(
                schedule.service_slug, schedule.endpoint_readable_id
            )
        except TokenfarmError:  # its endpoint is gone: the schedule says so on its own page
            continue
        if name in compile_action(endpoint.action).reads:
            touching.append(ScheduleStore.describe(schedule))
    return touching


async def show_value(state: Any, scope: Any, actor: Actor, name: str) -> str:
    """The current value for a user holding `secrets.read:NAME`, read as `GET
    /v1/secrets/{name}/value` reads it (rate limit, permission, value cache); logged by name and
    user, never by value."""
    await state.rate_limiter.check(scope, RouteKind.VALUE_READ, actor)
    ensure(actor, secret_read(name))
    body = await read_value(
        state.runner, state.value_cache, actor, name,
        environment=None, min_valid_seconds=None, received_at=None,
    )  # fmt: skip
    # Without min_valid_seconds nothing is refreshed, so the answer is always the value's body.
    assert isinstance(body, bytes)
    value = json.loads(body)["value"]
    audit.info(
        "secret %s: value shown in the console to %s",
        name,
        actor.label,
        extra={"secret": name, "actor": actor.label, "event": "console_value_shown"},
    )
    return value if isinstance(value, str) else json.dumps(value)
