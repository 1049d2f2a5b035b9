"""Carrying out a plan through the domain stores, in the caller's one transaction.

Every change goes through the same store method the API uses (so the same rules hold: actions
validated, nobody grants what they lack, `act_as` for `refresh_as`/`run_as`); the stores only
flush, and the caller commits once — or rolls back, for a dry run or after any error, so nothing
is ever half-applied.

Order: roles → service accounts → secrets (metadata and values; a secret whose binding changes
is unbound first) → providers (they name secrets) → services → secret bindings (refresh
endpoints, preset refreshers) → schedules; deletions (prune) run afterwards from schedules back
to roles (providers after secrets: a connected secret names its provider).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.accounts import AccountStore
from app.auth.actor import Actor
from app.auth.schemas import (
    RoleCreate,
    RoleUpdate,
    ServiceAccountCreate,
    ServiceAccountUpdate,
)
from app.config import Settings
from app.configuration.document import Kind
from app.configuration.loader import LoadedDocument
from app.configuration.plan import Change, Plan, Planner, authorize
from app.configuration.values import ValueSource
from app.crypto import Keyring
from app.errors import TokenfarmError
from app.presets.binder import PresetBinder
from app.presets.schemas import RefresherRequest
from app.providers.schemas import ProviderUpdate
from app.providers.store import ProviderStore
from app.schedules.schemas import ScheduleCreate, ScheduleUpdate
from app.schedules.store import ScheduleStore
from app.secrets.schemas import SecretCreate, SecretUpdate
from app.secrets.store import SecretStore
from app.services.store import ServiceStore

SECRET_METADATA = (
    "description",
    "environment_specific",
    "locked",
    "refresh_as",
    "refresh_before_expiry_seconds",
    "allowed_destinations",
)
DELETE_ORDER: tuple[Kind, ...] = (
    "schedule",
    "secret",
    "provider",
    "service",
    "service_account",
    "role",
)
LABELS: dict[Kind, str] = {
    "role": "role",
    "service_account": "service account",
    "secret": "secret",
    "service": "service",
    "schedule": "schedule",
    "provider": "provider",
}


class Applier:
    """Carries out a plan for one actor, in one session (which the caller commits)."""

    def __init__(
        self, session: AsyncSession, keyring: Keyring, settings: Settings, actor: Actor
    ) -> None:
        self.actor = actor
        self.accounts = AccountStore(session)
        self.secrets = SecretStore(session, keyring, settings)
        self.services = ServiceStore(session)
        self.schedules = ScheduleStore(session)
        self.binder = PresetBinder(session, keyring, settings)
        self.providers = ProviderStore(session)

    async def apply(self, plan: Plan) -> None:
        """Make every change of the plan; the first store error stops it (the caller rolls
        back), its message prefixed with the object it concerns."""
        pending = [change for change in plan.changes if change.action in ("create", "update")]
        steps: list[tuple[Change, Any]] = []
        steps += [(c, self._role) for c in pending if c.kind == "role"]
        steps += [(c, self._account) for c in pending if c.kind == "service_account"]
        steps += [(c, self._secret) for c in pending if c.kind == "secret"]
        steps += [(c, self._provider) for c in pending if c.kind == "provider"]
        steps += [(c, self._service) for c in pending if c.kind == "service"]
        steps += [(c, self._bind) for c in pending if c.kind == "secret" and c.rebinds]
        steps += [(c, self._schedule) for c in pending if c.kind == "schedule"]
        for kind in DELETE_ORDER:
            deleted = [c for c in plan.changes if c.kind == kind and c.action == "delete"]
            steps += [(c, self._delete) for c in deleted]
        for change, step in steps:
            try:
                await step(change)
            except TokenfarmError as exc:
                exc.message = f"{LABELS[change.kind]} {change.name!r}: {exc.message}"
                exc.extra.setdefault("kind", change.kind)
                exc.extra.setdefault("name", change.name)
                raise

    async def _role(self, change: Change) -> None:
        spec = change.spec
        if change.action == "create":
            data = RoleCreate(
                name=spec.name, description=spec.description, permissions=spec.permissions
            )
            await self.accounts.create_role(data, self.actor)
            return
        update = RoleUpdate.model_validate({name: getattr(spec, name) for name in change.fields})
        await self.accounts.update_role(change.current, update, self.actor)

    async def _account(self, change: Change) -> None:
        spec = change.spec
        if change.action == "create":
            data = ServiceAccountCreate(
                name=spec.name, description=spec.description, roles=spec.roles
            )
            await self.accounts.create_service_account(data, self.actor)
            return
        update = ServiceAccountUpdate.model_validate(
            {name: getattr(spec, name) for name in change.fields}
        )
        await self.accounts.update_service_account(change.current, update, self.actor)

    async def _secret(self, change: Change) -> None:
        """Metadata and value; the refresh binding comes after the services (`_bind`)."""
        spec = change.spec
        if change.action == "create":
            fields: dict[str, Any] = {name: getattr(spec, name) for name in SECRET_METADATA}
            fields["name"] = spec.name
            if change.writes_value:
                fields["value"] = change.value
            await self.secrets.create(
                SecretCreate.model_validate(fields), self.actor.label, caller=self.actor
            )
            return
        updates = {name: getattr(spec, name) for name in change.fields if name in SECRET_METADATA}
        if change.rebinds and change.current.refresh_endpoint is not None:
            # The old endpoint may be replaced or removed before the new binding is made.
            updates["refresh_endpoint"] = None
        if updates:
            await self.secrets.update(
                change.current, SecretUpdate.model_validate(updates), caller=self.actor
            )
        if change.writes_value:
            await self.secrets.set_value(
                change.current, change.value, actor=self.actor.label, source="manual"
            )

    async def _bind(self, change: Change) -> None:
        binding = change.binding
        assert binding is not None
        if binding.refresh_endpoint is None:
            return  # unbound already (`_secret`)
        if binding.refresher is not None:
            request = RefresherRequest(
                preset=binding.refresher.preset, params=binding.refresher.params
            )
            await self.binder.bind(change.name, request, self.actor)
            return
        secret = await self.secrets.get(change.name)
        await self.secrets.update(
            secret, SecretUpdate(refresh_endpoint=binding.refresh_endpoint), caller=self.actor
        )

    async def _provider(self, change: Change) -> None:
        if change.action == "create":
            await self.providers.create(change.spec)
            return
        data = ProviderUpdate.model_validate(change.spec.model_dump(exclude={"name"}))
        await self.providers.replace(change.current, data)

    async def _service(self, change: Change) -> None:
        if change.action == "create":
            await self.services.create(change.spec, self.actor)
        else:
            await self.services.replace(change.current, change.spec, self.actor)

    async def _schedule(self, change: Change) -> None:
        spec = change.spec
        assert change.target is not None
        service, endpoint = change.target
        values = {
            "description": spec.description,
            "service": service,
            "endpoint": endpoint,
            "cron": spec.cron,
            "timezone": spec.timezone,
            "run_as": spec.run_as,
            "enabled": spec.enabled,
            "environments": spec.environments,
        }
        if change.action == "create":
            data = ScheduleCreate.model_validate({"name": spec.name, **values})
            await self.schedules.create(data, self.actor)
            return
        update = ScheduleUpdate.model_validate({name: values[name] for name in change.fields})
        await self.schedules.update(change.current, update, self.actor)

    async def _delete(self, change: Change) -> None:
        row = change.current
        if change.kind == "schedule":
            await self.schedules.delete(row)
        elif change.kind == "secret":
            await self.secrets.delete(row)
        elif change.kind == "service":
            await self.services.delete(row)
        elif change.kind == "provider":
            await self.providers.delete(row)
        elif change.kind == "service_account":
            await self.accounts.delete_service_account(row, self.actor)
        else:
            await self.accounts.delete_role(row, self.actor)


async def apply_document(
    session: AsyncSession,
    keyring: Keyring,
    settings: Settings,
    loaded: LoadedDocument,
    *,
    actor: Actor,
    values: ValueSource,
    prune: bool,
) -> Plan:
    """Authorize, check and plan the document, then carry the plan out in `session`.

    Nothing is committed here: the caller commits to apply, or rolls back for a dry run (which
    so proves that the apply would succeed) and after any error.
    """
    authorize(actor, loaded.document)
    plan = await Planner(session, keyring, settings, values).plan(loaded, prune=prune)
    if plan.changed:
        await Applier(session, keyring, settings, actor).apply(plan)
    return plan
