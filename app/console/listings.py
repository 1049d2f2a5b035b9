"""What the runs, schedules, accounts, health and providers pages list, from the domain stores.

Each page shows what its API routes show, to the same people (the permissions are asked of the
`Actor`); a page whose permission the user lacks says which one to ask for instead of listing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.accounts import AccountStore
from app.auth.schemas import ApiKeyRead, RoleRead, ServiceAccountRead, UserRead
from app.health import NotReady, check_readiness
from app.runs.log import RunLog
from app.runs.schemas import RunStatus, RunSummary
from app.schedules.schemas import ScheduleRead
from app.schedules.store import ScheduleStore
from app.secrets.schemas import SecretRead
from app.secrets.store import SecretStore

RUN_STATUSES: tuple[RunStatus, ...] = ("succeeded", "failed", "storing", "recovered")
RUNS_SHOWN = 100
RECENT_FAILURES = 10


@dataclass(frozen=True)
class RunFilter:
    """The runs page's filter, as the query string gave it (unknown statuses dropped)."""

    status: str | None = None
    secret: str | None = None
    service: str | None = None
    endpoint: str | None = None

    @classmethod
    def of(cls, status: str | None, secret: str | None, endpoint: str | None) -> RunFilter:
        """`endpoint` is `SLUG` or `SLUG/READABLE_ID`."""
        slug, _, readable_id = (endpoint or "").partition("/")
        return cls(
            status=status if status in RUN_STATUSES else None,
            secret=secret or None,
            service=slug or None,
            endpoint=readable_id or None,
        )

    @property
    def endpoint_text(self) -> str:
        """The endpoint filter as typed: `SLUG/ID` or `SLUG`."""
        if not self.service:
            return ""
        return f"{self.service}/{self.endpoint}" if self.endpoint else self.service


async def list_runs(session: AsyncSession, wanted: RunFilter) -> list[RunSummary]:
    """The newest runs matching the filter (as `GET /v1/runs` filters)."""
    return await RunLog(session).list_all(
        service=wanted.service,
        endpoint=wanted.endpoint,
        secret=wanted.secret,
        status=wanted.status,
        limit=RUNS_SHOWN,
    )


async def list_schedules(session: AsyncSession) -> list[ScheduleRead]:
    """Every schedule, the next to run first (disabled ones last)."""
    schedules = [ScheduleStore.describe(s) for s in await ScheduleStore(session).list_all()]
    return sorted(
        schedules,
        key=lambda s: (s.next_run_at is None, s.next_run_at.isoformat() if s.next_run_at else "",
                       s.name),
    )  # fmt: skip


@dataclass(frozen=True)
class AccountWithKeys:
    """A service account and its API keys (never key material)."""

    account: ServiceAccountRead
    keys: list[ApiKeyRead]


@dataclass(frozen=True)
class Accounts:
    """Everything the accounts page lists."""

    users: list[UserRead]
    roles: list[RoleRead]
    service_accounts: list[AccountWithKeys]


async def list_accounts(store: AccountStore) -> Accounts:
    """Users, roles, service accounts and their keys, as the accounts API lists them."""
    users = [await store.describe_user(user) for user in await store.users()]
    roles = [store.describe_role(role) for role in await store.roles()]
    accounts = [
        AccountWithKeys(await store.describe_service_account(a), await store.api_keys(a))
        for a in await store.service_accounts()
    ]
    return Accounts(users, roles, accounts)


@dataclass
class Health:
    """The health page: readiness (as `/readyz`), secrets that need a look, recent failures."""

    ready: bool
    revision: str | None
    reason: str | None
    message: str | None
    troubled_secrets: list[SecretRead] = field(default_factory=list)
    failures: list[RunSummary] = field(default_factory=list)


async def health(state: Any, session: AsyncSession, *, secrets: bool, runs: bool) -> Health:
    """Readiness for everyone logged in; failing secrets with `secrets.manage` (`secrets`), the
    latest failed runs with `runs.read` (`runs`)."""
    try:
        revision = await check_readiness(state.engine, getattr(state, "keyring", None))
        page = Health(True, revision, None, None)
    except NotReady as exc:
        page = Health(False, None, exc.reason, exc.message)
    if secrets:
        store = SecretStore(session, state.keyring, state.settings)
        page.troubled_secrets = [s for s in await store.list_all() if s.status != "ok"]
    if runs:
        page.failures = await RunLog(session).list_all(status="failed", limit=RECENT_FAILURES)
    return page
