"""The account that refreshes connected secrets on their own (expiry-driven refresh).

Expiry-driven refresh runs as a secret's `refresh_as` service account (the scheduler loads it
afresh each time). A connected secret gets the built-in account `connect-refresher` unless its
creator named another: its role holds exactly what each connected secret's refresher needs
(`services.run:refreshers/ID`, `secrets.update_from_service:` the secret and its companion),
added per secret, so the account can run nothing else and write nothing else.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.auth.models import Role, ServiceAccount, ServiceAccountRole
from app.auth.permissions import secret_update_from_service, service_run, validate_permissions

REFRESHER_ACCOUNT = "connect-refresher"
REFRESHER_ROLE = "connect-refresher"


async def grant_refresher(session: AsyncSession, refresh_endpoint: str, written: list[str]) -> str:
    """Let `connect-refresher` (created on first use) run `refresh_endpoint` and write the
    secrets `written`; answers the account's name, for the secret's `refresh_as`."""
    role = (
        await session.execute(select(Role).where(col(Role.name) == REFRESHER_ROLE))
    ).scalar_one_or_none()
    if role is None:
        role = Role(
            name=REFRESHER_ROLE,
            description="Refreshes connected secrets on their own: one endpoint and two secrets "
            "per connected secret, added when it is created.",
            permissions=[],
        )
        session.add(role)
    slug, readable_id = refresh_endpoint.split("/", 1)
    wanted = [service_run(slug, readable_id)] + [secret_update_from_service(n) for n in written]
    # A new list: the JSON column notices an assignment, not an in-place append.
    role.permissions = validate_permissions(list(dict.fromkeys([*role.permissions, *wanted])))
    account = (
        await session.execute(
            select(ServiceAccount).where(col(ServiceAccount.name) == REFRESHER_ACCOUNT)
        )
    ).scalar_one_or_none()
    if account is None:
        account = ServiceAccount(
            name=REFRESHER_ACCOUNT,
            description="Runs the refreshers of connected secrets before they expire.",
        )
        session.add(account)
    await session.flush()
    assert account.id is not None and role.id is not None
    held = await session.get(ServiceAccountRole, (account.id, role.id))
    if held is None:
        session.add(ServiceAccountRole(service_account_id=account.id, role_id=role.id))
        await session.flush()
    return REFRESHER_ACCOUNT
