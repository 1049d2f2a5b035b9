"""The rules of schedules: validation, the next tick, and reading their runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.auth.accounts import AccountStore
from app.auth.actor import Actor, ensure
from app.auth.permissions import act_as
from app.db import one_or_not_found, utcnow
from app.errors import AlreadyExists, InvalidInput, NotFound
from app.schedules.cron import check_cron, next_fire, zone
from app.schedules.models import Schedule
from app.schedules.schemas import ScheduleCreate, ScheduleRead, ScheduleUpdate
from app.services.store import ServiceStore


def pack_environments(environments: Sequence[str] | None) -> str | None:
    """`["production", "staging"]` -> `",production,staging,"` (what a replica filters on)."""
    return f",{','.join(sorted(set(environments)))}," if environments else None


def unpack_environments(packed: str | None) -> list[str] | None:
    """The inverse of `pack_environments`."""
    return [e for e in packed.split(",") if e] if packed else None


class ScheduleStore:
    """Schedules for one session; services only flush, the request commits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, name: str) -> Schedule:
        """A schedule by name, or NotFound."""
        query = select(Schedule).where(col(Schedule.name) == name)
        return await one_or_not_found(self.session, query, f"schedule {name!r}")

    async def list_all(self) -> list[Schedule]:
        """Every schedule, by name."""
        query = select(Schedule).order_by(col(Schedule.name))
        return list((await self.session.execute(query)).scalars().all())

    async def _check(self, values: dict[str, Any], actor: Actor, run_as_changed: bool) -> None:
        """Refuse a schedule that names something that doesn't exist, saying which."""
        check_cron(values["cron"])
        zone(values["timezone"])
        try:
            await ServiceStore(self.session).get_endpoint(values["service"], values["endpoint"])
        except NotFound as exc:
            raise InvalidInput(f"service/endpoint: {exc.message}", field="endpoint") from None
        try:
            await AccountStore(self.session).service_account(values["run_as"])
        except NotFound:
            raise InvalidInput(
                f"run_as: no service account {values['run_as']!r}", field="run_as"
            ) from None
        if run_as_changed:
            ensure(actor, act_as(values["run_as"]))

    @staticmethod
    def _plan(schedule: Schedule) -> None:
        """The next tick from now; none while disabled."""
        schedule.next_run_at = (
            next_fire(schedule.cron, schedule.timezone, utcnow()) if schedule.enabled else None
        )

    async def create(self, data: ScheduleCreate, actor: Actor) -> Schedule:
        """A new schedule, validated; its first tick is the next one from now."""
        values = data.model_dump()
        await self._check(values, actor, run_as_changed=True)
        schedule = Schedule(
            name=data.name,
            description=data.description,
            service_slug=data.service,
            endpoint_readable_id=data.endpoint,
            cron=" ".join(data.cron.split()),
            timezone=data.timezone,
            run_as=data.run_as,
            enabled=data.enabled,
            environments=pack_environments(data.environments),
            created_by=actor.label,
        )
        self._plan(schedule)
        self.session.add(schedule)
        try:
            await self.session.flush()
        except IntegrityError:
            raise AlreadyExists(f"schedule {data.name!r} already exists") from None
        return schedule

    async def update(self, schedule: Schedule, data: ScheduleUpdate, actor: Actor) -> Schedule:
        """Change fields; a new cron, time zone or `enabled` plans the next tick anew."""
        given = data.model_dump(exclude_unset=True)
        for field in ("service", "endpoint", "cron", "timezone", "run_as", "enabled"):
            if field in given and given[field] is None:
                raise InvalidInput(f"{field}: can't be null", field=field)
        current = self.describe(schedule).model_dump()
        values = {**current, **given}
        await self._check(values, actor, run_as_changed=values["run_as"] != schedule.run_as)
        replan = any(values[field] != current[field] for field in ("cron", "timezone", "enabled"))
        schedule.description = values["description"] or ""
        schedule.service_slug = values["service"]
        schedule.endpoint_readable_id = values["endpoint"]
        schedule.cron = " ".join(values["cron"].split())
        schedule.timezone = values["timezone"]
        schedule.run_as = values["run_as"]
        schedule.enabled = values["enabled"]
        if "environments" in given:
            schedule.environments = pack_environments(given["environments"])
        schedule.updated_at = utcnow()
        if replan:
            self._plan(schedule)
        await self.session.flush()
        return schedule

    async def delete(self, schedule: Schedule) -> None:
        """Delete a schedule (its runs stay in the log)."""
        await self.session.delete(schedule)
        await self.session.flush()

    @staticmethod
    def describe(schedule: Schedule) -> ScheduleRead:
        """A schedule as the API shows it."""
        return ScheduleRead(
            name=schedule.name,
            description=schedule.description,
            service=schedule.service_slug,
            endpoint=schedule.endpoint_readable_id,
            cron=schedule.cron,
            timezone=schedule.timezone,
            run_as=schedule.run_as,
            enabled=schedule.enabled,
            environments=unpack_environments(schedule.environments),
            next_run_at=schedule.next_run_at,
            last_run_at=schedule.last_run_at,
            last_status=schedule.last_status,
            last_run_id=schedule.last_run_id,
            running=schedule.claimed_by is not None,
            created_by=schedule.created_by,
            created_at=schedule.created_at,
            updated_at=schedule.updated_at,
        )
