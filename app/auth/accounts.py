"""The rules of the identity domain: who a credential belongs to, roles, and who holds them."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import col

from app.auth import keys
from app.auth.actor import Actor
from app.auth.models import ApiKey, Role, ServiceAccount, ServiceAccountRole, User, UserRole
from app.auth.passwords import MIN_PASSWORD_LENGTH, PasswordHashing, hash_password
from app.auth.permissions import (
    Permission,
    ensure_may_grant,
    permission_matches,
    validate_permissions,
)
from app.auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    RoleCreate,
    RoleRead,
    RoleUpdate,
    ServiceAccountCreate,
    ServiceAccountRead,
    ServiceAccountUpdate,
    UserCreate,
    UserRead,
    UserUpdate,
)
from app.auth.tokens import TokenClaims
from app.db import one_or_not_found, utcnow
from app.errors import AlreadyExists, Conflict, InvalidInput, NotAuthenticated, NotFound

OWNER_ROLE = "owner"
ANONYMOUS_ROLE = "anonymous"
# Writing last_used_at on every request would turn each value read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def normalize_email(email: str) -> str:
    """Emails compare case-insensitively; refuse what can't be one."""
    email = email.strip().lower()
    local, _, domain = email.partition("@")
    if not local or not domain or "@" in domain or "\x00" in email or " " in email:
        raise InvalidInput(f"{email!r} is not an email address")
    return email


def _id(row: User | ServiceAccount | Role) -> int:
    assert row.id is not None, "the row has not been flushed"
    return row.id


def _ensure_fit_for_anonymous(permissions: list[str]) -> None:
    """Opening an endpoint to everyone is a choice; opening account management never is."""
    for permission in permissions:
        if permission_matches(permission, Permission.ACCOUNTS_MANAGE):
            raise Conflict(
                f"the anonymous role can't hold {permission!r}: callers without a credential "
                "must never manage accounts"
            )


class AccountStore:
    """Users, service accounts, API keys and roles, for one session.

    `passwords` hashes off the event loop with the app's bound; a store made without it (the
    CLI, config as code) gets a bound of its own.
    """

    def __init__(self, session: AsyncSession, passwords: PasswordHashing | None = None) -> None:
        self.session = session
        self._passwords = passwords

    @property
    def passwords(self) -> PasswordHashing:
        """The hashing of this store (made on first use: most stores never hash)."""
        if self._passwords is None:
            self._passwords = PasswordHashing(1)
        return self._passwords

    # --- credentials -> actors -------------------------------------------------------------

    async def _permissions(self, role_ids: list[int]) -> frozenset[str]:
        if not role_ids:
            return frozenset()
        rows = await self.session.execute(
            select(col(Role.permissions)).where(col(Role.id).in_(role_ids))
        )
        return frozenset(p for (permissions,) in rows for p in permissions)

    async def _user_role_ids(self, user: User) -> list[int]:
        query = select(col(UserRole.role_id)).where(col(UserRole.user_id) == _id(user))
        return list((await self.session.execute(query)).scalars())

    async def _account_role_ids(self, account: ServiceAccount) -> list[int]:
        query = select(col(ServiceAccountRole.role_id)).where(
            col(ServiceAccountRole.service_account_id) == _id(account)
        )
        return list((await self.session.execute(query)).scalars())

    async def anonymous_actor(self) -> Actor:
        """The caller without a credential: the built-in `anonymous` role's permissions."""
        role = await self._role_or_none(ANONYMOUS_ROLE)
        permissions = frozenset(role.permissions) if role else frozenset()
        return Actor(kind="anonymous", name="anonymous", permissions=permissions)

    async def login(self, email: str, password: str) -> User:
        """The user for an email and password, or NotAuthenticated (same answer for every miss)."""
        if "\x00" in email:
            # No account has such an email; PostgreSQL would refuse to even look.
            raise NotAuthenticated("wrong email or password, or the account is disabled")
        user = (
            await self.session.execute(select(User).where(col(User.email) == email.strip().lower()))
        ).scalar_one_or_none()
        # Hash even when there is no such user, so timing doesn't tell which emails exist.
        password_hash = user.password_hash if user else await self._dummy_hash()
        valid = await self.passwords.verify(password_hash, password)
        if user is None or not valid or user.disabled:
            raise NotAuthenticated("wrong email or password, or the account is disabled")
        return user

    async def actor_for_token(self, claims: TokenClaims) -> Actor:
        """The user a verified token names, if it still exists, is enabled, and none of its
        tokens were ended since (a password change, "log out everywhere")."""
        if "\x00" in claims.subject:
            raise NotAuthenticated("the token's user no longer exists or is disabled")
        user = (
            await self.session.execute(select(User).where(col(User.email) == claims.subject))
        ).scalar_one_or_none()
        if user is None or user.disabled:
            raise NotAuthenticated("the token's user no longer exists or is disabled")
        # A generation, not a time: `iat` has second resolution, and a token issued in the same
        # second as a password change would outlive it.
        if claims.generation != user.token_generation:
            raise NotAuthenticated(
                "the token was ended by a password change or a log-out everywhere; log in again"
            )
        permissions = await self._permissions(await self._user_role_ids(user))
        return Actor(kind="user", name=user.email, permissions=permissions)

    async def _dummy_hash(self) -> str:
        """A hash to verify against when there is no such user; made on first use, not at
        import (argon2 costs 64 MiB and some CPU, which processes that never log anyone in
        shouldn't pay)."""
        if not _dummy:
            _dummy.append(await self.passwords.hash("tokenfarm-timing-equaliser"))
        return _dummy[0]

    async def actor_for_key(self, key: str, now: datetime) -> tuple[Actor, datetime | None]:
        """The service account an API key belongs to, if the key is known, unexpired and live,
        and when the key expires."""
        parts = keys.split_key(key)
        if parts is None:
            raise NotAuthenticated("the API key is not valid")
        key_id, secret = parts
        row = (
            await self.session.execute(select(ApiKey).where(col(ApiKey.key_id) == key_id))
        ).scalar_one_or_none()
        if row is None or not keys.matches(secret, row.key_hash):
            raise NotAuthenticated("the API key is not valid")
        if row.expires_at is not None and row.expires_at <= now:
            raise NotAuthenticated("the API key has expired")
        account = await self.session.get(ServiceAccount, row.service_account_id)
        if account is None:
            raise NotAuthenticated("the API key is not valid")
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            row.last_used_at = now
            await self.session.flush()
        permissions = await self._permissions(await self._account_role_ids(account))
        actor = Actor(kind="service_account", name=account.name, permissions=permissions)
        return actor, row.expires_at

    async def actor_for_service_account(self, name: str) -> Actor:
        """A service account as the actor of a run it is configured for (`run_as`, `refresh_as`)."""
        account = await self.service_account(name)
        permissions = await self._permissions(await self._account_role_ids(account))
        return Actor(kind="service_account", name=account.name, permissions=permissions)

    # --- roles -----------------------------------------------------------------------------

    async def _role_or_none(self, name: str) -> Role | None:
        query = select(Role).where(col(Role.name) == name)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def role(self, name: str) -> Role:
        """The role called `name`, or NotFound."""
        query = select(Role).where(col(Role.name) == name)
        return await one_or_not_found(self.session, query, f"role {name!r}")

    @staticmethod
    def describe_role(role: Role) -> RoleRead:
        """A role as the API shows it."""
        return RoleRead(
            name=role.name,
            description=role.description,
            permissions=role.permissions,
            builtin=role.builtin,
        )

    async def roles(self) -> list[Role]:
        """Every role, by name."""
        return list((await self.session.execute(select(Role).order_by(col(Role.name)))).scalars())

    async def create_role(self, data: RoleCreate, actor: Actor) -> Role:
        """A new role; it may hold only permissions the creator holds."""
        permissions = validate_permissions(data.permissions)
        ensure_may_grant(actor, permissions, f"role {data.name!r}")
        if await self._role_or_none(data.name):
            raise AlreadyExists(f"role {data.name!r} already exists")
        role = Role(name=data.name, description=data.description, permissions=permissions)
        self.session.add(role)
        await self._flush_unique(f"role {data.name!r} already exists")
        return role

    async def update_role(self, role: Role, data: RoleUpdate, actor: Actor) -> Role:
        """Change a role; needs every permission it holds now and every one it would hold."""
        if data.permissions is not None and role.name == OWNER_ROLE:
            raise Conflict("the owner role always holds '*'")
        # No one edits a role stronger than themselves, not even its description.
        ensure_may_grant(actor, role.permissions, f"changing role {role.name!r}")
        if data.permissions is not None:
            permissions = validate_permissions(data.permissions)
            # Whoever holds this role gains what is added: only grant what you have.
            ensure_may_grant(actor, permissions, f"role {role.name!r}")
            if role.name == ANONYMOUS_ROLE:
                _ensure_fit_for_anonymous(permissions)
            role.permissions = permissions
        if data.description is not None:
            role.description = data.description
        await self.session.flush()
        return role

    async def delete_role(self, role: Role, actor: Actor) -> None:
        """Delete a role (not a built-in one); needs every permission it holds."""
        if role.builtin:
            raise Conflict(f"role {role.name!r} is built in and can't be deleted")
        ensure_may_grant(actor, role.permissions, f"deleting role {role.name!r}")
        await self.session.delete(role)
        await self.session.flush()

    async def _resolve_roles(self, names: list[str], actor: Actor, what: str) -> list[Role]:
        """Roles by name, refusing any whose permissions the granting actor lacks."""
        roles = [await self.role(name) for name in dict.fromkeys(names)]
        for role in roles:
            ensure_may_grant(actor, role.permissions, f"giving {what} the role {role.name!r}")
        return roles

    async def _flush_unique(self, message: str) -> None:
        try:
            await self.session.flush()
        except IntegrityError:
            raise AlreadyExists(message) from None

    # --- users -----------------------------------------------------------------------------

    async def user(self, email: str) -> User:
        """The user with this email, or NotFound."""
        if "\x00" in email:
            raise NotFound(f"user {email!r} does not exist")
        query = select(User).where(col(User.email) == email.strip().lower())
        return await one_or_not_found(self.session, query, f"user {email!r}")

    async def describe_user(self, user: User) -> UserRead:
        """A user as the API shows it."""
        role_ids = await self._user_role_ids(user)
        names = await self._role_names(role_ids)
        return UserRead(
            email=user.email,
            disabled=user.disabled,
            roles=names,
            created_at=user.created_at,
            password_changed_at=user.password_changed_at,
        )

    async def _role_names(self, role_ids: list[int]) -> list[str]:
        if not role_ids:
            return []
        query = select(col(Role.name)).where(col(Role.id).in_(role_ids)).order_by(col(Role.name))
        return list((await self.session.execute(query)).scalars())

    async def users(self) -> list[User]:
        """Every user, by email."""
        query = select(User).order_by(col(User.email))
        return list((await self.session.execute(query)).scalars())

    async def create_user(self, data: UserCreate, actor: Actor) -> User:
        """A new user with roles the creator may grant."""
        email = normalize_email(data.email)
        roles = await self._resolve_roles(data.roles, actor, f"user {email!r}")
        if (
            await self.session.execute(select(col(User.id)).where(col(User.email) == email))
        ).first():
            raise AlreadyExists(f"user {email!r} already exists")
        user = User(email=email, password_hash=await self.passwords.hash(data.password))
        self.session.add(user)
        await self._flush_unique(f"user {email!r} already exists")
        await self._set_user_roles(user, roles)
        return user

    async def _set_user_roles(self, user: User, roles: list[Role]) -> None:
        await self.session.execute(delete(UserRole).where(col(UserRole.user_id) == _id(user)))
        for role in roles:
            self.session.add(UserRole(user_id=_id(user), role_id=_id(role)))
        await self._flush_user(user)

    async def _flush_user(self, user: User) -> None:
        """Flush a change to `user`; NotFound when a concurrent request deleted it meanwhile
        (its row is gone: the update matches nothing, a role row's foreign key fails)."""
        email = user.email  # a failed flush leaves the object unreadable
        try:
            await self.session.flush()
        except (StaleDataError, IntegrityError):
            raise NotFound(f"user {email!r} does not exist") from None

    async def _guard_peer(self, current_role_ids: list[int], actor: Actor, what: str) -> None:
        """Changing an account needs every permission it holds: no one edits a stronger peer."""
        ensure_may_grant(actor, sorted(await self._permissions(current_role_ids)), what)

    async def update_user(self, user: User, data: UserUpdate, actor: Actor) -> User:
        """Change a user's password, disabled flag or roles."""
        role_ids = await self._user_role_ids(user)
        await self._guard_peer(role_ids, actor, f"changing user {user.email!r}")
        if data.roles is not None:
            roles = await self._resolve_roles(data.roles, actor, f"user {user.email!r}")
            owner_id = _id(await self.role(OWNER_ROLE))
            loses_owner = owner_id in role_ids and owner_id not in {_id(r) for r in roles}
            await self._ensure_an_owner_stays(user, removing=loses_owner)
            await self._set_user_roles(user, roles)
        if data.disabled is not None:
            if data.disabled:
                await self._ensure_an_owner_stays(user, removing=True)
            user.disabled = data.disabled
        if data.password is not None:
            user.password_hash = await self.passwords.hash(data.password)
            user.password_changed_at = utcnow()
            await self._end_tokens(user)
        await self._flush_user(user)
        return user

    async def end_sessions(self, user: User, actor: Actor) -> None:
        """Log a user out everywhere: every token issued so far stops working (needs every
        permission the user holds, unless it is the caller themself)."""
        if not (actor.kind == "user" and actor.name == user.email):
            await self._guard_peer(
                await self._user_role_ids(user), actor, f"ending the sessions of {user.email!r}"
            )
        await self._end_tokens(user)

    async def end_own_sessions(self, actor: Actor) -> None:
        """Log the calling user out everywhere; only users have login tokens."""
        if actor.kind == "anonymous":
            raise NotAuthenticated("log in first: there is no session to end without a login")
        if actor.kind != "user":
            raise Conflict(
                "only users have login sessions: revoke a service account's API keys one by one "
                "(DELETE /v1/service-accounts/{name}/api-keys/{key_name})"
            )
        await self.end_sessions(await self.user(actor.name), actor)

    async def _end_tokens(self, user: User) -> None:
        """Move the user's token generation on, in SQL: two changes at once both count."""
        await self.session.execute(
            update(User)
            .where(col(User.id) == _id(user))
            .values(token_generation=col(User.token_generation) + 1)
            .execution_options(synchronize_session="fetch")
        )

    async def delete_user(self, user: User, actor: Actor) -> None:
        """Delete a user (never the last enabled owner)."""
        await self._guard_peer(
            await self._user_role_ids(user), actor, f"deleting user {user.email!r}"
        )
        await self._ensure_an_owner_stays(user, removing=True)
        await self.session.delete(user)
        await self._flush_user(user)

    async def _ensure_an_owner_stays(self, user: User, *, removing: bool) -> None:
        """Refuse the change that would take away the last enabled owner."""
        if not removing:
            return
        # Locking the owner role serializes such changes: two owners can't demote each other.
        owner = (
            await self.session.execute(
                select(Role).where(col(Role.name) == OWNER_ROLE).with_for_update()
            )
        ).scalar_one()
        query = (
            select(col(User.id))
            .join(UserRole, col(UserRole.user_id) == col(User.id))
            .where(col(UserRole.role_id) == _id(owner), col(User.disabled).is_(False))
        )
        owners = set((await self.session.execute(query)).scalars())
        if owners == {user.id}:
            raise Conflict("this would leave no enabled owner; make someone else owner first")

    # --- service accounts and keys ---------------------------------------------------------

    async def service_account(self, name: str) -> ServiceAccount:
        """The service account called `name`, or NotFound."""
        query = select(ServiceAccount).where(col(ServiceAccount.name) == name)
        return await one_or_not_found(self.session, query, f"service account {name!r}")

    async def describe_service_account(self, account: ServiceAccount) -> ServiceAccountRead:
        """A service account as the API shows it."""
        return ServiceAccountRead(
            name=account.name,
            description=account.description,
            roles=await self._role_names(await self._account_role_ids(account)),
            created_at=account.created_at,
        )

    async def service_accounts(self) -> list[ServiceAccount]:
        """Every service account, by name."""
        query = select(ServiceAccount).order_by(col(ServiceAccount.name))
        return list((await self.session.execute(query)).scalars())

    async def create_service_account(
        self, data: ServiceAccountCreate, actor: Actor
    ) -> ServiceAccount:
        """A new service account with roles the creator may grant."""
        roles = await self._resolve_roles(data.roles, actor, f"service account {data.name!r}")
        exists = select(col(ServiceAccount.id)).where(col(ServiceAccount.name) == data.name)
        if (await self.session.execute(exists)).first():
            raise AlreadyExists(f"service account {data.name!r} already exists")
        account = ServiceAccount(name=data.name, description=data.description)
        self.session.add(account)
        await self._flush_unique(f"service account {data.name!r} already exists")
        await self._set_account_roles(account, roles)
        return account

    async def _set_account_roles(self, account: ServiceAccount, roles: list[Role]) -> None:
        await self.session.execute(
            delete(ServiceAccountRole).where(
                col(ServiceAccountRole.service_account_id) == _id(account)
            )
        )
        for role in roles:
            self.session.add(ServiceAccountRole(service_account_id=_id(account), role_id=_id(role)))
        await self.session.flush()

    async def update_service_account(
        self, account: ServiceAccount, data: ServiceAccountUpdate, actor: Actor
    ) -> ServiceAccount:
        """Change a service account's description or roles."""
        what = f"changing service account {account.name!r}"
        await self._guard_peer(await self._account_role_ids(account), actor, what)
        if data.roles is not None:
            roles = await self._resolve_roles(
                data.roles, actor, f"service account {account.name!r}"
            )
            await self._set_account_roles(account, roles)
        if data.description is not None:
            account.description = data.description
        await self.session.flush()
        return account

    async def delete_service_account(self, account: ServiceAccount, actor: Actor) -> None:
        """Delete a service account and all its keys."""
        what = f"deleting service account {account.name!r}"
        await self._guard_peer(await self._account_role_ids(account), actor, what)
        await self.session.delete(account)
        await self.session.flush()

    async def api_keys(self, account: ServiceAccount) -> list[ApiKeyRead]:
        """A service account's keys, without key material."""
        query = (
            select(ApiKey)
            .where(col(ApiKey.service_account_id) == _id(account))
            .order_by(col(ApiKey.name))
        )
        return [
            ApiKeyRead(
                name=row.name,
                key_id=row.key_id,
                expires_at=row.expires_at,
                last_used_at=row.last_used_at,
                created_at=row.created_at,
            )
            for row in (await self.session.execute(query)).scalars()
        ]

    async def create_api_key(
        self, account: ServiceAccount, data: ApiKeyCreate, actor: Actor
    ) -> ApiKeyCreated:
        """A new key; whoever holds it acts with the account's permissions, so the same rule."""
        what = f"a key of service account {account.name!r}"
        await self._guard_peer(await self._account_role_ids(account), actor, what)
        if data.expires_at is not None and data.expires_at <= utcnow():
            raise InvalidInput("expires_at must be in the future")
        new = keys.make_key()
        self.session.add(
            ApiKey(
                service_account_id=_id(account),
                name=data.name,
                key_id=new.key_id,
                key_hash=new.key_hash,
                expires_at=data.expires_at,
            )
        )
        await self._flush_unique(
            f"service account {account.name!r} already has a key {data.name!r}"
        )
        return ApiKeyCreated(name=data.name, key=new.key, expires_at=data.expires_at)

    async def revoke_api_key(self, account: ServiceAccount, name: str, actor: Actor) -> None:
        """Revoke a key for a caller who holds every permission of its account."""
        what = f"revoking a key of service account {account.name!r}"
        await self._guard_peer(await self._account_role_ids(account), actor, what)
        await self.delete_api_key(account, name)

    async def delete_api_key(self, account: ServiceAccount, name: str) -> None:
        """Revoke a key: it stops working at once (no permission check; see `revoke_api_key`)."""
        result = await self.session.execute(
            delete(ApiKey).where(
                col(ApiKey.service_account_id) == _id(account), col(ApiKey.name) == name
            )
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise NotFound(f"service account {account.name!r} has no key {name!r}")


_dummy: list[str] = []


async def ensure_owner(session: AsyncSession, email: str, password: str) -> tuple[User, bool]:
    """The owner account for `email`, created if missing (an existing one is left unchanged)."""
    email = normalize_email(email)
    existing = (
        await session.execute(select(User).where(col(User.email) == email))
    ).scalar_one_or_none()
    if existing is not None:
        return existing, False
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"the owner's password needs at least {MIN_PASSWORD_LENGTH} characters")
    user = User(email=email, password_hash=hash_password(password))
    session.add(user)
    await session.flush()
    owner = (await session.execute(select(Role).where(col(Role.name) == OWNER_ROLE))).scalar_one()
    session.add(UserRole(user_id=_id(user), role_id=_id(owner)))
    await session.flush()
    return user, True
