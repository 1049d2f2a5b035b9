"""Every route resolves its caller, or is public on purpose: a walk over the app's routes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import APIRouter, Depends, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts

from app.auth.dependencies import CurrentActor, current_actor, require, required_permission
from app.auth.permissions import Permission, is_valid_permission
from app.config import Settings
from app.main import create_app

# Each route that answers without a credential, and why that is safe.
PUBLIC = {
    # Liveness probe: load balancers and orchestrators call it without credentials; says "ok".
    ("GET", "/healthz"): "liveness probe",
    # Readiness probe: same callers; reveals only whether the database and keys are usable.
    ("GET", "/readyz"): "readiness probe",
    # Login itself: the caller has no credential yet; it answers only for a right password.
    ("POST", "/auth/token"): "login",
    # Swagger UI: a static page; every call it makes goes through the guarded routes.
    ("GET", "/docs"): "API explorer page",
    # Swagger UI's OAuth2 redirect page of the Authorize dialog: static HTML, no data.
    ("GET", "/docs/oauth2-redirect"): "API explorer login redirect",
    # ReDoc: a static page rendering /openapi.json.
    ("GET", "/redoc"): "API reference page",
    # The API's description: paths and schemas, never data; /docs needs it before login.
    ("GET", "/openapi.json"): "API description",
    # The connect flow's redirect URI: the provider sends the person's browser, which has no
    # credential; only a state tokenfarm issued (single use, bound to that browser) goes on.
    ("GET", "/connect/callback"): "connect flow redirect URI",
    # A connect link: its single-use token is the credential, issued to whoever holds
    # secrets.connect:NAME; it only starts that secret's flow.
    ("GET", "/connect/link"): "connect link",
}
# Routes guarded by `current_actor` whose permission names something from the request, so the
# route checks it in its body (`ensure`, `ensure_can_run`); the matrix tests each of them.
CHECKED_IN_BODY = {
    # secrets.read:NAME, NAME from the path.
    ("GET", "/v1/secrets/{name}/value"),
    # services.run:SLUG or services.run:SLUG/ID, from the path.
    ("GET", "/api/services/{slug}/{readable_id}"),
    ("POST", "/api/services/{slug}/{readable_id}"),
    ("PUT", "/api/services/{slug}/{readable_id}"),
    # services.run of the secret's bound endpoint, known only once the secret is loaded.
    ("GET", "/refresh/{secret}"),
    # The manage permission of each section the posted document declares, and act_as.
    ("POST", "/v1/apply"),
    # secrets.connect:NAME, NAME from the path (tests/connect/test_flow.py).
    ("POST", "/v1/secrets/{name}/connect-links"),
    ("GET", "/connect/{name}"),
    # secrets.connect:NAME (disconnect: or secrets.manage), NAME from the path
    # (tests/connect/test_device.py, test_disconnect.py).
    ("POST", "/v1/secrets/{name}/device-authorizations"),
    ("GET", "/v1/secrets/{name}/device-authorizations/{flow_id}"),
    ("DELETE", "/v1/secrets/{name}/connection"),
}

# The console's pages (app/console) answer people with a session cookie, not API callers: they
# are walked apart (TestConsoleRouteWalk). Each page that works without a session, and why.
CONSOLE_PUBLIC = {
    # Redirects to the secrets page, which sends strangers to the login page.
    ("GET", "/"): "front door",
    ("GET", "/console"): "front door",
    # The login form, and logging in: the visitor has no session yet.
    ("GET", "/console/login"): "login form",
    ("POST", "/console/login"): "login",
}


def is_console(path: str) -> bool:
    """Whether a route is a console page (guarded by its session, not by a credential)."""
    return path == "/" or path == "/console" or path.startswith("/console/")


# Routes that act only on the caller's own account: any logged-in user, no permission; the
# anonymous caller gets 401 and a service account 409 (tests/auth/test_sessions.py).
CALLERS_OWN = {("POST", "/auth/logout-all")}


@dataclass(frozen=True)
class Guard:
    """What a route depends on for authorization."""

    resolves_actor: bool
    requires_permission: bool


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    """Every dependency callable below a dependant, recursively."""
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _is_require(call: Callable[..., Any]) -> bool:
    return getattr(call, "__qualname__", "") == f"{require.__name__}.<locals>.check" and (
        getattr(call, "__module__", "") == require.__module__
    )


def required_permissions(app: FastAPI) -> dict[tuple[str, str], set[Any]]:
    """(method, path) -> what each of its `require(...)` dependencies checks (None: unreadable)."""
    required: dict[tuple[str, str], set[Any]] = {}
    for route in iter_route_contexts(app.routes):
        dependant: Dependant | None = getattr(route, "dependant", None)
        if dependant is None:
            continue
        checks = {required_permission(call) for call in _calls(dependant) if _is_require(call)}
        for method in (route.methods or set()) - {"HEAD"}:
            assert route.path is not None
            required[(method, route.path)] = checks
    return required


def route_guards(app: FastAPI) -> dict[tuple[str, str], Guard | None]:
    """(method, path) -> its guard, or None for a route with no dependencies (a plain Route).

    `app.routes` holds included routers as wrappers; `iter_route_contexts` flattens them into
    each route as served, with the router's own dependencies (`require(...)`) merged in.
    """
    guards: dict[tuple[str, str], Guard | None] = {}
    for route in iter_route_contexts(app.routes):
        dependant: Dependant | None = getattr(route, "dependant", None)
        guard = None
        if dependant is not None:
            calls = list(_calls(dependant))
            guard = Guard(
                resolves_actor=current_actor in calls,
                requires_permission=any(_is_require(call) for call in calls),
            )
        for method in sorted((route.methods or set()) - {"HEAD"}):
            assert route.path is not None
            if not is_console(route.path):
                guards[(method, route.path)] = guard
    return guards


def console_pages_without_session(app: FastAPI) -> list[tuple[str, str]]:
    """Console routes that don't depend on `console_user`, and aren't listed as public."""
    from app.console.sessions import console_user

    found = []
    for route in iter_route_contexts(app.routes):
        dependant: Dependant | None = getattr(route, "dependant", None)
        if route.path is None or not is_console(route.path):
            continue
        has_session = dependant is not None and console_user in set(_calls(dependant))
        for method in sorted((route.methods or set()) - {"HEAD"}):
            if not has_session and (method, route.path) not in CONSOLE_PUBLIC:
                found.append((method, route.path))
    return sorted(found)


def unguarded(app: FastAPI) -> list[tuple[str, str]]:
    """Routes that don't resolve the caller and aren't in the public list."""
    return sorted(
        key
        for key, guard in route_guards(app).items()
        if key not in PUBLIC and (guard is None or not guard.resolves_actor)
    )


def unchecked(app: FastAPI) -> list[tuple[str, str]]:
    """Routes that resolve the caller but check no fixed permission, and aren't listed."""
    return sorted(
        key
        for key, guard in route_guards(app).items()
        if guard is not None
        and guard.resolves_actor
        and not guard.requires_permission
        and key not in CHECKED_IN_BODY
        and key not in CALLERS_OWN
    )


@pytest.fixture(scope="module")
def bare_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The app as configured for tests, without a database: the walk only reads its routes."""
    return create_app(
        Settings(
            environment="test",
            data_dir=tmp_path_factory.mktemp("routes"),
            encryption_keys=Fernet.generate_key().decode(),
            jwt_secret="route-walk-" + "x" * 40,
        )
    )


def _fresh_app(tmp_path: Path) -> FastAPI:
    return create_app(
        Settings(
            environment="test",
            data_dir=tmp_path,
            encryption_keys=Fernet.generate_key().decode(),
            jwt_secret="route-walk-" + "y" * 40,
        )
    )


class TestRouteWalk:
    def test_every_route_resolves_the_caller_or_is_public(self, bare_app: FastAPI) -> None:
        assert unguarded(bare_app) == []

    def test_every_guarded_route_requires_a_permission_or_checks_one_in_its_body(
        self, bare_app: FastAPI
    ) -> None:
        assert unchecked(bare_app) == []

    def test_the_lists_name_only_routes_that_exist(self, bare_app: FastAPI) -> None:
        guards = route_guards(bare_app)
        assert set(PUBLIC) - set(guards) == set()
        assert CHECKED_IN_BODY - set(guards) == set()
        assert CALLERS_OWN - set(guards) == set()
        assert all(guards[key] is not None for key in CHECKED_IN_BODY)

    def test_the_walk_sees_every_api_route(self, bare_app: FastAPI) -> None:
        # The walk must not miss routes behind an included router, or it would prove nothing.
        operations = {
            (method.upper(), path)
            for path, items in bare_app.openapi()["paths"].items()
            for method in items
        }
        assert operations <= set(route_guards(bare_app))
        assert ("POST", "/v1/roles") in operations

    def test_no_console_page_resolves_an_api_caller(self, bare_app: FastAPI) -> None:
        # A session is never an API credential, and an API credential never opens a page.
        for route in iter_route_contexts(bare_app.routes):
            dependant = getattr(route, "dependant", None)
            if route.path is not None and is_console(route.path) and dependant is not None:
                assert current_actor not in set(_calls(dependant)), route.path

    def test_an_unguarded_route_fails_the_walk(self, tmp_path: Path) -> None:
        app = _fresh_app(tmp_path)
        leaky = APIRouter()

        @leaky.get("/v1/leak")
        async def leak() -> dict[str, str]:
            return {}

        @app.get("/v1/also-leaks")
        async def also_leaks() -> dict[str, str]:
            return {}

        app.include_router(leaky)
        assert unguarded(app) == [("GET", "/v1/also-leaks"), ("GET", "/v1/leak")]

    def test_a_route_that_resolves_the_caller_but_checks_nothing_fails_the_walk(
        self, tmp_path: Path
    ) -> None:
        app = _fresh_app(tmp_path)

        @app.get("/v1/who")
        async def who(actor: CurrentActor) -> dict[str, str]:
            return {"who": actor.label}

        assert unguarded(app) == []
        assert unchecked(app) == [("GET", "/v1/who")]

    def test_every_permission_the_routes_require_is_a_known_name(self, bare_app: FastAPI) -> None:
        required = required_permissions(bare_app)
        used = set().union(*required.values())
        assert None not in used, "a require() dependency that doesn't say what it checks"
        assert all(isinstance(p, Permission) and is_valid_permission(p) for p in used)
        # The walk reads real requirements: these routes are guarded by their plain permission.
        assert required[("GET", "/v1/runs")] == {Permission.RUNS_READ}
        assert required[("POST", "/v1/roles")] == {Permission.ACCOUNTS_MANAGE}
        assert required[("POST", "/v1/secrets/{name}/refresher")] == {
            Permission.SERVICES_MANAGE,
            Permission.SECRETS_MANAGE,
        }
        assert required[("GET", "/v1/secrets/{name}/value")] == set()

    def test_a_router_level_requirement_counts(self, tmp_path: Path) -> None:
        app = _fresh_app(tmp_path)
        guarded = APIRouter(dependencies=[Depends(require(Permission.RUNS_READ))])

        @guarded.get("/v1/guarded")
        async def fine() -> dict[str, str]:
            return {}

        app.include_router(guarded)
        assert route_guards(app)[("GET", "/v1/guarded")] == Guard(True, True)
        assert unguarded(app) == unchecked(app) == []


class TestOpenAPISecurity:
    def test_guarded_operations_offer_both_schemes_and_public_ones_none(
        self, bare_app: FastAPI
    ) -> None:
        schema = bare_app.openapi()
        assert set(schema["components"]["securitySchemes"]) == {"Login", "APIKey"}
        for path, items in schema["paths"].items():
            for method, operation in items.items():
                security = operation.get("security")
                if (method.upper(), path) in PUBLIC:
                    assert security is None, (method, path)
                else:
                    assert security == [{"Login": []}, {"APIKey": []}], (method, path)


class TestPublicRoutes:
    @pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"])
    async def test_answers_without_a_credential(
        self, anonymous_client: httpx.AsyncClient, path: str
    ) -> None:
        response = await anonymous_client.get(path)
        assert response.status_code == 200, response.text

    async def test_the_anonymous_role_opens_a_route_on_purpose(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        assert (await anonymous_client.get("/v1/runs")).status_code == 401
        response = await client.patch("/v1/roles/anonymous", json={"permissions": ["runs.read"]})
        assert response.status_code == 200, response.text
        assert (await anonymous_client.get("/v1/runs")).status_code == 200
        refused = await anonymous_client.get("/v1/secrets")
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Bearer"


class TestConsoleRouteWalk:
    def test_every_console_page_needs_a_session_or_is_public(self, bare_app: FastAPI) -> None:
        assert console_pages_without_session(bare_app) == []

    def test_the_public_list_names_only_console_routes_that_exist(self, bare_app: FastAPI) -> None:
        served = {
            (method, route.path)
            for route in iter_route_contexts(bare_app.routes)
            if route.path is not None
            for method in (route.methods or set())
        }
        assert set(CONSOLE_PUBLIC) - served == set()

    def test_a_console_page_without_the_session_fails_the_walk(self, tmp_path: Path) -> None:
        app = _fresh_app(tmp_path)
        router = APIRouter()

        @router.post("/console/forgotten")
        async def forgotten() -> dict[str, str]:
            return {}

        app.include_router(router)
        assert console_pages_without_session(app) == [("POST", "/console/forgotten")]
