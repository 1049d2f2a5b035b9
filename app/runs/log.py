"""Reading the run log."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.errors import NotFound
from app.runs.models import Run, RunSecret
from app.runs.schemas import RunDetail, RunSummary


class RunLog:
    """Queries over recorded runs, for one session."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _secrets_of(self, run_ids: list[str]) -> dict[str, list[str]]:
        rows = (
            await self.session.execute(
                select(col(RunSecret.run_id), col(RunSecret.secret_name)).where(
                    col(RunSecret.run_id).in_(run_ids)
                )
            )
        ).all()
        found: dict[str, list[str]] = {run_id: [] for run_id in run_ids}
        for run_id, name in rows:
            found[run_id].append(name)
        return found

    @staticmethod
    def _summary(run: Run, secrets: list[str]) -> dict[str, object]:
        return {
            "id": run.id,
            "service": run.service_slug,
            "endpoint": run.endpoint_readable_id,
            "trigger": run.trigger,
            "schedule": run.schedule_name,
            "actor": run.actor,
            "status": run.status,
            "http_status": run.http_status,
            "error_type": run.error_type,
            "error_class": run.error_class,
            "error_message": run.error_message,
            "recoverable": run.recovery is not None,
            "secrets": sorted(secrets),
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "duration_ms": run.duration_ms,
        }

    async def list_all(
        self,
        *,
        service: str | None = None,
        endpoint: str | None = None,
        secret: str | None = None,
        status: str | None = None,
        trigger: str | None = None,
        schedule: str | None = None,
        limit: int = 50,
    ) -> list[RunSummary]:
        """The newest runs first, filtered."""
        query = select(Run).order_by(col(Run.started_at).desc(), col(Run.id)).limit(limit)
        if service:
            query = query.where(col(Run.service_slug) == service)
        if endpoint:
            query = query.where(col(Run.endpoint_readable_id) == endpoint)
        if status:
            query = query.where(col(Run.status) == status)
        if trigger:
            query = query.where(col(Run.trigger) == trigger)
        if schedule:
            query = query.where(col(Run.schedule_name) == schedule)
        if secret:
            targeted = select(col(RunSecret.run_id)).where(col(RunSecret.secret_name) == secret)
            query = query.where(col(Run.id).in_(targeted))
        runs = (await self.session.execute(query)).scalars().all()
        secrets = await self._secrets_of([run.id for run in runs])
        return [RunSummary.model_validate(self._summary(run, secrets[run.id])) for run in runs]

    async def get(self, run_id: str) -> RunDetail:
        """One run with its trace."""
        run = await self.session.get(Run, run_id)
        if run is None:
            raise NotFound(
                f"run {run_id!r} is not in the log (successful runs are kept only for endpoints "
                "with enable_log)"
            )
        secrets = await self._secrets_of([run.id])
        return RunDetail.model_validate({**self._summary(run, secrets[run.id]), "trace": run.trace})
