"""HTTP routes of identity: login, roles, users, service accounts and their API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Path, Request, Response, status
from fastapi.responses import JSONResponse

from app.auth.accounts import AccountStore
from app.auth.dependencies import CurrentActor, require
from app.auth.oauth import NO_STORE, oauth_error, oauth_error_responses
from app.auth.permissions import Permission
from app.auth.schemas import (
    ACCOUNT_NAME_PATTERN,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    LoginToken,
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
from app.auth.throttle import LoginThrottle
from app.clients import client_address
from app.db import utcnow
from app.dependencies import SessionDep
from app.errors import NotAuthenticated, TooManyAttempts

auth_router = APIRouter(tags=["auth"])
router = APIRouter(tags=["accounts"], dependencies=[Depends(require(Permission.ACCOUNTS_MANAGE))])
NamePath = Annotated[str, Path(pattern=ACCOUNT_NAME_PATTERN, examples=["ci-deployer"])]


async def _store(request: Request, session: SessionDep) -> AccountStore:
    return AccountStore(session, request.app.state.passwords)


StoreDep = Annotated[AccountStore, Depends(_store)]


def _no_content() -> Response:
    # A fresh one each time: FastAPI attaches the request's background tasks to a returned
    # Response, so a shared instance would carry one request's state into the next.
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@auth_router.post("/auth/token", responses=oauth_error_responses())
async def login(
    request: Request,
    store: StoreDep,
    username: Annotated[str | None, Form(description="Your email.")] = None,
    password: Annotated[str | None, Form(json_schema_extra={"format": "password"})] = None,
    grant_type: Annotated[str | None, Form(description="`password` (may be left out).")] = None,
    scope: Annotated[str, Form(description="Ignored: a token carries your roles.")] = "",
) -> Response:
    """Log in with email (`username`) and password; answers a bearer token. Refusals are OAuth
    errors (RFC 6749 §5.2, `{"error", "error_description"}`); repeated failures are answered
    429 with `Retry-After` for a while (per account and per client address)."""
    if grant_type is not None and grant_type != "password":
        return oauth_error(
            400,
            "unsupported_grant_type",
            "this token endpoint supports only grant_type=password (email and password)",
        )
    if not username or not password:
        return oauth_error(
            400, "invalid_request", "send username (your email) and password as form fields"
        )
    throttle: LoginThrottle = request.app.state.login_throttle
    try:
        with throttle.attempt(username, client_address(request.scope, throttle.trusted)):
            user = await store.login(username, password)
    except TooManyAttempts as exc:
        wait = str(exc.retry_after_seconds)
        return oauth_error(429, "temporarily_unavailable", exc.message, {"Retry-After": wait})
    except NotAuthenticated:
        return oauth_error(400, "invalid_grant", "invalid email or password")
    tokens = request.app.state.tokens
    token = tokens.issue(user.email, user.token_generation, utcnow())
    body = LoginToken(access_token=token, expires_in=tokens.ttl_seconds)
    return JSONResponse(body.model_dump(), headers=NO_STORE)


@auth_router.post("/auth/logout-all", status_code=status.HTTP_204_NO_CONTENT)
async def logout_everywhere(actor: CurrentActor, store: StoreDep) -> Response:
    """Log out everywhere: every login token of the calling user stops working, this one too."""
    await store.end_own_sessions(actor)
    return _no_content()


# --- roles ----------------------------------------------------------------------------------


@router.post("/v1/roles", status_code=status.HTTP_201_CREATED)
async def create_role(data: RoleCreate, actor: CurrentActor, store: StoreDep) -> RoleRead:
    """Create a role; it may hold only permissions you hold."""
    return store.describe_role(await store.create_role(data, actor))


@router.get("/v1/roles")
async def list_roles(store: StoreDep) -> list[RoleRead]:
    """List every role with its permissions."""
    return [store.describe_role(role) for role in await store.roles()]


@router.get("/v1/roles/{name}")
async def get_role(name: NamePath, store: StoreDep) -> RoleRead:
    """Show one role."""
    return store.describe_role(await store.role(name))


@router.patch("/v1/roles/{name}")
async def update_role(
    name: NamePath, data: RoleUpdate, actor: CurrentActor, store: StoreDep
) -> RoleRead:
    """Change a role's description or permissions (only to permissions you hold)."""
    return store.describe_role(await store.update_role(await store.role(name), data, actor))


@router.delete("/v1/roles/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_role(name: NamePath, actor: CurrentActor, store: StoreDep) -> Response:
    """Delete a role (built-in roles stay)."""
    await store.delete_role(await store.role(name), actor)
    return _no_content()


# --- users ----------------------------------------------------------------------------------


@router.post("/v1/users", status_code=status.HTTP_201_CREATED)
async def create_user(data: UserCreate, actor: CurrentActor, store: StoreDep) -> UserRead:
    """Create a user with roles you may grant."""
    return await store.describe_user(await store.create_user(data, actor))


@router.get("/v1/users")
async def list_users(store: StoreDep) -> list[UserRead]:
    """List every user with their roles."""
    return [await store.describe_user(user) for user in await store.users()]


@router.get("/v1/users/{email}")
async def get_user(email: str, store: StoreDep) -> UserRead:
    """Show one user."""
    return await store.describe_user(await store.user(email))


@router.patch("/v1/users/{email}")
async def update_user(
    email: str, data: UserUpdate, actor: CurrentActor, store: StoreDep
) -> UserRead:
    """Change a user's password (ends their older tokens), disabled flag or roles."""
    return await store.describe_user(await store.update_user(await store.user(email), data, actor))


@router.delete("/v1/users/{email}/sessions", status_code=status.HTTP_204_NO_CONTENT)
async def end_user_sessions(email: str, actor: CurrentActor, store: StoreDep) -> Response:
    """Log a user out everywhere: every login token issued to them so far stops working."""
    await store.end_sessions(await store.user(email), actor)
    return _no_content()


@router.delete("/v1/users/{email}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(email: str, actor: CurrentActor, store: StoreDep) -> Response:
    """Delete a user (never the last enabled owner); their tokens stop working at once."""
    await store.delete_user(await store.user(email), actor)
    return _no_content()


# --- service accounts and API keys ------------------------------------------------------------


@router.post("/v1/service-accounts", status_code=status.HTTP_201_CREATED)
async def create_service_account(
    data: ServiceAccountCreate, actor: CurrentActor, store: StoreDep
) -> ServiceAccountRead:
    """Create a service account with roles you may grant."""
    account = await store.create_service_account(data, actor)
    return await store.describe_service_account(account)


@router.get("/v1/service-accounts")
async def list_service_accounts(store: StoreDep) -> list[ServiceAccountRead]:
    """List every service account with its roles."""
    return [await store.describe_service_account(a) for a in await store.service_accounts()]


@router.get("/v1/service-accounts/{name}")
async def get_service_account(name: NamePath, store: StoreDep) -> ServiceAccountRead:
    """Show one service account."""
    return await store.describe_service_account(await store.service_account(name))


@router.patch("/v1/service-accounts/{name}")
async def update_service_account(
    name: NamePath, data: ServiceAccountUpdate, actor: CurrentActor, store: StoreDep
) -> ServiceAccountRead:
    """Change a service account's description or roles."""
    account = await store.update_service_account(await store.service_account(name), data, actor)
    return await store.describe_service_account(account)


@router.delete("/v1/service-accounts/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_service_account(name: NamePath, actor: CurrentActor, store: StoreDep) -> Response:
    """Delete a service account; its keys stop working at once."""
    await store.delete_service_account(await store.service_account(name), actor)
    return _no_content()


@router.get("/v1/service-accounts/{name}/api-keys")
async def list_api_keys(name: NamePath, store: StoreDep) -> list[ApiKeyRead]:
    """List a service account's keys (names and dates, never key material)."""
    return await store.api_keys(await store.service_account(name))


@router.post("/v1/service-accounts/{name}/api-keys", status_code=status.HTTP_201_CREATED)
async def create_api_key(
    name: NamePath, data: ApiKeyCreate, actor: CurrentActor, store: StoreDep
) -> ApiKeyCreated:
    """Make a new API key; the answer shows it once, and it is never shown again."""
    return await store.create_api_key(await store.service_account(name), data, actor)


@router.delete(
    "/v1/service-accounts/{name}/api-keys/{key_name}", status_code=status.HTTP_204_NO_CONTENT
)
async def delete_api_key(
    name: NamePath,
    key_name: Annotated[str, Path(pattern=ACCOUNT_NAME_PATTERN)],
    actor: CurrentActor,
    store: StoreDep,
) -> Response:
    """Revoke an API key; it stops working at once."""
    await store.revoke_api_key(await store.service_account(name), key_name, actor)
    return _no_content()
