"""HTTP routes of schedules."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status

from app.auth.dependencies import CurrentActor, require
from app.auth.permissions import Permission
from app.dependencies import SessionDep
from app.runs.log import RunLog
from app.runs.schemas import RunSummary
from app.schedules.schemas import (
    SCHEDULE_NAME_PATTERN,
    ScheduleCreate,
    ScheduleRead,
    ScheduleUpdate,
)
from app.schedules.store import ScheduleStore

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])
MANAGE = [Depends(require(Permission.SCHEDULES_MANAGE))]
NamePath = Annotated[str, Path(pattern=SCHEDULE_NAME_PATTERN, examples=["hourly-refresh"])]


async def _store(session: SessionDep) -> ScheduleStore:
    return ScheduleStore(session)


StoreDep = Depends(_store)


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=MANAGE)
async def create_schedule(
    data: ScheduleCreate, actor: CurrentActor, store: ScheduleStore = StoreDep
) -> ScheduleRead:
    """Create a schedule; needs `schedules.manage` and `act_as:RUN_AS`."""
    return store.describe(await store.create(data, actor))


@router.get("", dependencies=MANAGE)
async def list_schedules(store: ScheduleStore = StoreDep) -> list[ScheduleRead]:
    """Every schedule with its state (next and last run)."""
    return [store.describe(schedule) for schedule in await store.list_all()]


@router.get("/{name}", dependencies=MANAGE)
async def get_schedule(name: NamePath, store: ScheduleStore = StoreDep) -> ScheduleRead:
    """One schedule with its state."""
    return store.describe(await store.get(name))


@router.patch("/{name}", dependencies=MANAGE)
async def update_schedule(
    name: NamePath, data: ScheduleUpdate, actor: CurrentActor, store: ScheduleStore = StoreDep
) -> ScheduleRead:
    """Change a schedule; a new `run_as` needs `act_as` for it."""
    return store.describe(await store.update(await store.get(name), data, actor))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=MANAGE)
async def delete_schedule(name: NamePath, store: ScheduleStore = StoreDep) -> Response:
    """Delete a schedule; its runs stay in the log."""
    await store.delete(await store.get(name))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{name}/runs", dependencies=[Depends(require(Permission.RUNS_READ))])
async def schedule_runs(
    name: NamePath,
    session: SessionDep,
    limit: int = Query(50, ge=1, le=500),
) -> list[RunSummary]:
    """The runs of a schedule, newest first; needs `runs.read`."""
    await ScheduleStore(session).get(name)
    return await RunLog(session).list_all(schedule=name, limit=limit)
