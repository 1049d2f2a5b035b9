"""Writing what a run's upstream answered when storing it failed or the process died first.

The run row keeps the pending writes encrypted (`run.recovery`) from the moment the upstream
answered until they are stored. `Recovery.recover` writes them as new versions, refusing when a
secret has changed since the run began (someone refreshed or set it: recovering would overwrite a
newer value) unless forced, and while the run may still be in flight.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.config import Settings
from app.crypto import Keyring
from app.db import utcnow
from app.errors import Conflict, NotFound
from app.runs.flights import advisory_key, endpoint_turn
from app.runs.models import Run, RunSecret
from app.runs.schemas import RecoveredSecret, RecoveryResult
from app.secrets.store import SecretStore


class Recovery:
    """Recovers runs, within the caller's transaction (the request's session or the CLI's)."""

    def __init__(self, session: AsyncSession, keyring: Keyring, settings: Settings) -> None:
        self.session = session
        self.keyring = keyring
        self.settings = settings

    async def recover(self, run_id: str, *, actor: str, force: bool = False) -> RecoveryResult:
        """Write the kept answer of run `run_id`; the run becomes `recovered`."""
        run = (
            await self.session.execute(select(Run).where(col(Run.id) == run_id).with_for_update())
        ).scalar_one_or_none()
        if run is None:
            raise NotFound(f"no run {run_id!r} in the log")
        if run.recovery is None:
            raise Conflict(
                f"run {run_id} has nothing to recover (its status is {run.status!r}); only a run "
                "whose upstream answered but whose writes were not stored keeps an answer"
            )
        if run.status == "storing" and not force:
            await self._ensure_not_in_flight(run)
        payload: dict[str, Any] = self.keyring.decrypt(run.recovery)
        store = SecretStore(self.session, self.keyring, self.settings)
        written: list[RecoveredSecret] = []
        for write in payload["writes"]:
            name = write["secret"]
            secret = await store.get(name)
            current = await store.current_version(secret, write["environment"])
            if current != write["base_version"] and not force:
                raise Conflict(
                    f"secret {name!r} changed since run {run_id} began (version "
                    f"{write['base_version']} is now {current}): recovering would overwrite a "
                    "newer value; nothing was written. Recover with force to write it anyway",
                    secret=name,
                )
            expires_at = write.get("expires_at")
            result = await store.set_value(
                secret,
                write["value"],
                environment=write["environment"],
                expires_at=datetime.fromisoformat(expires_at) if expires_at else None,
                actor=actor,
                source="recovery",
                run_id=run_id,
                expected_version=current,
            )
            secret.last_refreshed_at = utcnow()
            written.append(RecoveredSecret(secret=name, version=result.version))
            targeted = await self.session.get(RunSecret, (run_id, name))
            if targeted is not None:
                targeted.written = True
        run.status = "recovered"
        run.recovery = None
        run.finished_at = run.finished_at or utcnow()
        await self.session.flush()
        return RecoveryResult(run_id=run_id, status="recovered", written=written)

    async def _ensure_not_in_flight(self, run: Run) -> None:
        """Refuse while the run may still store its writes itself."""
        bind = self.session.get_bind()
        if bind.dialect.name == "postgresql":
            # A run holds its endpoint's advisory lock until it has stored its outcome: if the
            # lock is free, the run is over (its process is gone). Held until this commits.
            key = advisory_key(endpoint_turn(run.service_slug, run.endpoint_readable_id))
            free = (
                await self.session.execute(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}
                )
            ).scalar_one()
            if free:
                return
            raise Conflict(
                f"run {run.id} may still be in flight: endpoint {run.service_slug}/"
                f"{run.endpoint_readable_id} is running; try again once it is done"
            )
        in_flight_until = run.started_at + timedelta(
            seconds=self.settings.run_deadline_seconds + self.settings.http_timeout_seconds
        )
        if utcnow() < in_flight_until:
            raise Conflict(
                f"run {run.id} may still be in flight until {in_flight_until.isoformat()}; "
                "try again then, or recover with force if its process is known to be gone"
            )
