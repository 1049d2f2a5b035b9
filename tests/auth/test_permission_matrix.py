"""Per route: no credential -> 401, an unrelated permission -> 403 naming the missing one,
exactly the needed permission -> 2xx."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.auth.conftest import Callers, add_user, assert_refused, error_of
from tests.auth.test_route_guards import CALLERS_OWN, PUBLIC, route_guards
from tests.conftest import create_secret

UNRELATED = "act_as:spare"  # a real permission that no route accepts on its own


@dataclass(frozen=True)
class Case:
    """One route: how to call it, the permission that lets a caller in, and one that doesn't."""

    method: str
    path: str
    needed: str
    body: dict[str, Any] | None = None
    wrong: str = UNRELATED
    named: str = ""  # the permission the 403 names, when it isn't `needed` itself
    route: str = ""  # the route's path template, when `path` doesn't show it
    needs: frozenset[str] = field(default_factory=frozenset)  # what the database must hold
    # When the allowed call can't succeed on what `needs` makes, the status past the guard.
    allowed_status: int | None = None

    @property
    def id(self) -> str:
        return f"{self.method} {self.path} [{self.needed}]"


def case(method: str, path: str, needed: str, *needs: str, **more: Any) -> Case:
    """A row of the matrix."""
    return Case(method, path, needed, needs=frozenset(needs), **more)


SERVICE = {
    "name": "Demo",
    "endpoints": [
        {
            "readable_id": "ping",
            "name": "Ping",
            "methods": ["GET", "POST", "PUT"],
            "enable_log": True,
            "action": [{"type": "log", "message": "pong"}],
        }
    ],
}
NEW_USER = {"email": "new@example.com", "password": "a-password-of-length", "roles": []}
NEW_WEBHOOK = {"name": "new-hook", "url": "https://hooks.example.com/tokenfarm"}
PROVIDER = {
    "authorization_url": "https://idp.example.com/authorize",
    "token_url": "https://idp.example.com/token",
    "client_auth": "none",
    "client_id_secret": "IDP_CLIENT_ID",
}
NEW_PROVIDER = {"name": "new-idp", **PROVIDER}

MATRIX = [
    # --- secrets: managing them, and reading a value ------------------------------------------
    case("POST", "/v1/secrets", "secrets.manage", body={"name": "NEW_SECRET"}),
    case("GET", "/v1/secrets", "secrets.manage", "secrets"),
    case("GET", "/v1/secrets/VAULT", "secrets.manage", "secrets", route="/v1/secrets/{name}"),
    case(
        "PATCH",
        "/v1/secrets/VAULT",
        "secrets.manage",
        "secrets",
        body={"description": "changed"},
        route="/v1/secrets/{name}",
    ),
    case("DELETE", "/v1/secrets/DOOMED", "secrets.manage", "secrets", route="/v1/secrets/{name}"),
    case(
        "PUT",
        "/v1/secrets/VAULT/value",
        "secrets.manage",
        "secrets",
        body={"value": "by-hand"},
        route="/v1/secrets/{name}/value",
    ),
    case(
        "GET",
        "/v1/secrets/VAULT/versions",
        "secrets.manage",
        "secrets",
        route="/v1/secrets/{name}/versions",
    ),
    case(
        "POST",
        "/v1/secrets/VAULT/rollback",
        "secrets.manage",
        "secrets",
        body={"version": 1},
        route="/v1/secrets/{name}/rollback",
    ),
    # --- connections (VAULT is no connected secret: past the guard, 409 or 404) -------------
    case(
        "POST",
        "/v1/secrets/VAULT/connect-links",
        "secrets.connect:VAULT",
        "secrets",
        body={},
        wrong="secrets.manage",
        route="/v1/secrets/{name}/connect-links",
        allowed_status=409,
    ),
    case(
        "GET",
        "/connect/VAULT",
        "secrets.connect:VAULT",
        "secrets",
        wrong="secrets.manage",
        route="/connect/{name}",
        allowed_status=409,
    ),
    case(
        "POST",
        "/v1/secrets/VAULT/device-authorizations",
        "secrets.connect:VAULT",
        "secrets",
        wrong="secrets.manage",
        route="/v1/secrets/{name}/device-authorizations",
        allowed_status=409,
    ),
    case(
        "GET",
        "/v1/secrets/VAULT/device-authorizations/unknown",
        "secrets.connect:VAULT",
        "secrets",
        wrong="secrets.manage",
        route="/v1/secrets/{name}/device-authorizations/{flow_id}",
        allowed_status=404,
    ),
    case(
        "DELETE",
        "/v1/secrets/VAULT/connection",
        "secrets.connect:VAULT",
        "secrets",
        wrong="secrets.read:VAULT",
        route="/v1/secrets/{name}/connection",
        allowed_status=409,
    ),
    case(
        "DELETE",
        "/v1/secrets/VAULT/connection",
        "secrets.manage",
        "secrets",
        wrong="secrets.connect:OTHER",
        named="secrets.connect:VAULT",
        route="/v1/secrets/{name}/connection",
        allowed_status=409,
    ),
    # Managing secrets is not reading them; reading another secret is not reading this one.
    case(
        "GET",
        "/v1/secrets/VAULT/value",
        "secrets.read:VAULT",
        "secrets",
        wrong="secrets.manage",
        route="/v1/secrets/{name}/value",
    ),
    case(
        "GET",
        "/v1/secrets/VAULT/value",
        "secrets.read:VAULT",
        "secrets",
        wrong="secrets.read:OTHER",
        route="/v1/secrets/{name}/value",
    ),
    # --- services -----------------------------------------------------------------------------
    case("POST", "/v1/services", "services.manage", body={"slug": "new", "name": "New"}),
    case("GET", "/v1/services", "services.manage", "service"),
    case("GET", "/v1/services/demo", "services.manage", "service", route="/v1/services/{slug}"),
    case(
        "PUT",
        "/v1/services/demo",
        "services.manage",
        "service",
        body=SERVICE,
        route="/v1/services/{slug}",
    ),
    case("DELETE", "/v1/services/demo", "services.manage", "service", route="/v1/services/{slug}"),
    # --- running: by slug, by slug/id, directly and through /refresh ---------------------------
    *(
        case(
            method,
            "/api/services/demo/ping",
            "services.run:demo",
            "service",
            wrong="services.run:other",
            named="services.run:demo",
            route="/api/services/{slug}/{readable_id}",
        )
        for method in ("GET", "POST", "PUT")
    ),
    case(
        "GET",
        "/api/services/demo/ping",
        "services.run:demo/ping",
        "service",
        wrong="services.manage",
        named="services.run:demo",
        route="/api/services/{slug}/{readable_id}",
    ),
    case(
        "GET",
        "/refresh/VAULT",
        "services.run:demo",
        "secrets",
        "service",
        wrong="services.manage",
        # Without any run permission the bound endpoint is not named: no probing.
        named="services.run:SLUG",
        route="/refresh/{secret}",
    ),
    case(
        "GET",
        "/refresh/VAULT",
        "services.run:demo/ping",
        "secrets",
        "service",
        wrong="services.run:demo/other",
        named="services.run:demo",
        route="/refresh/{secret}",
    ),
    # --- operations: Prometheus scrapes with an API key -----------------------------------------
    case("GET", "/metrics", "metrics.read", "secrets", wrong="runs.read"),
    # --- the run log --------------------------------------------------------------------------
    case("GET", "/v1/runs", "runs.read", "run"),
    case("GET", "/v1/runs/{run_id}", "runs.read", "run", wrong="services.run:demo"),
    case(
        "POST",
        "/v1/runs/{run_id}/recover",
        "secrets.manage",
        "run",
        wrong="runs.read",
        # A run that stored its writes has nothing to recover: 409 is past the guard.
        allowed_status=409,
    ),
    # --- schedules ----------------------------------------------------------------------------
    case(
        "POST",
        "/v1/schedules",
        "*",  # it needs two: schedules.manage and act_as:RUN_AS (tests/schedules has each)
        "service",
        "accounts",
        wrong="schedules.manage",
        named="act_as:spare",
        body={
            "name": "new-schedule",
            "service": "demo",
            "endpoint": "ping",
            "cron": "0 * * * *",
            "run_as": "spare",
        },
    ),
    case("GET", "/v1/schedules", "schedules.manage", "schedule"),
    case(
        "GET", "/v1/schedules/nightly", "schedules.manage", "schedule", route="/v1/schedules/{name}"
    ),
    case(
        "PATCH",
        "/v1/schedules/nightly",
        "schedules.manage",
        "schedule",
        body={"description": "changed"},
        route="/v1/schedules/{name}",
    ),
    case(
        "DELETE",
        "/v1/schedules/nightly",
        "schedules.manage",
        "schedule",
        route="/v1/schedules/{name}",
    ),
    case(
        "GET",
        "/v1/schedules/nightly/runs",
        "runs.read",
        "schedule",
        wrong="schedules.manage",
        route="/v1/schedules/{name}/runs",
    ),
    # --- presets ------------------------------------------------------------------------------
    case("GET", "/v1/presets", "services.manage", wrong="secrets.manage"),
    case(
        "POST",
        "/v1/secrets/VAULT/refresher",
        "*",  # it needs two: services.manage and secrets.manage (tests/presets has each alone)
        "secrets",
        wrong="services.manage",
        named="secrets.manage",
        route="/v1/secrets/{name}/refresher",
        body={
            "preset": "oauth2_client_credentials",
            "params": {
                "token_url": "https://auth.example.com/token",
                "client_id_secret": "DOOMED",
                "client_secret_secret": "DOOMED",
            },
        },
    ),
    # --- config as code: each section the document declares needs its manage permission ------
    case(
        "POST",
        "/v1/apply",
        "secrets.manage",
        body={"document": "version: 1\nsecrets:\n  - name: APPLIED\n"},
    ),
    # --- webhooks -----------------------------------------------------------------------------
    case("POST", "/v1/webhooks", "webhooks.manage", body=NEW_WEBHOOK),
    case("GET", "/v1/webhooks", "webhooks.manage", "webhook"),
    case("GET", "/v1/webhooks/ops", "webhooks.manage", "webhook", route="/v1/webhooks/{name}"),
    case(
        "PATCH",
        "/v1/webhooks/ops",
        "webhooks.manage",
        "webhook",
        body={"description": "changed"},
        route="/v1/webhooks/{name}",
    ),
    case("DELETE", "/v1/webhooks/ops", "webhooks.manage", "webhook", route="/v1/webhooks/{name}"),
    case(
        "POST",
        "/v1/webhooks/ops/rotate-secret",
        "webhooks.manage",
        "webhook",
        body={"grace_seconds": 60},
        route="/v1/webhooks/{name}/rotate-secret",
    ),
    # Its ping fails (nothing listens there); the answer says so with a 200.
    case(
        "POST",
        "/v1/webhooks/ops/test",
        "webhooks.manage",
        "webhook",
        wrong="secrets.manage",
        route="/v1/webhooks/{name}/test",
    ),
    # --- providers ----------------------------------------------------------------------------
    case("POST", "/v1/providers", "providers.manage", "provider", body=NEW_PROVIDER),
    case("GET", "/v1/providers", "providers.manage", "provider"),
    case("GET", "/v1/providers/catalog", "providers.manage"),
    case("GET", "/v1/providers/idp", "providers.manage", "provider", route="/v1/providers/{name}"),
    case(
        "GET",
        "/v1/providers/idp/endpoints",
        "providers.manage",
        "provider",
        route="/v1/providers/{name}/endpoints",
    ),
    case(
        "PUT",
        "/v1/providers/idp",
        "providers.manage",
        "provider",
        body={**PROVIDER, "scopes": ["read"]},
        route="/v1/providers/{name}",
    ),
    case(
        "DELETE", "/v1/providers/idp", "providers.manage", "provider", route="/v1/providers/{name}"
    ),
    # --- accounts -----------------------------------------------------------------------------
    case("POST", "/v1/roles", "accounts.manage", body={"name": "new-role", "permissions": []}),
    case("GET", "/v1/roles", "accounts.manage"),
    case("GET", "/v1/roles/owner", "accounts.manage", route="/v1/roles/{name}"),
    case(
        "PATCH",
        "/v1/roles/spare",
        "accounts.manage",
        "accounts",
        body={"description": "changed"},
        route="/v1/roles/{name}",
    ),
    case("DELETE", "/v1/roles/spare", "accounts.manage", "accounts", route="/v1/roles/{name}"),
    case("POST", "/v1/users", "accounts.manage", body=NEW_USER),
    case("GET", "/v1/users", "accounts.manage", "user"),
    case("GET", "/v1/users/weak@example.com", "accounts.manage", "user", route="/v1/users/{email}"),
    case(
        "PATCH",
        "/v1/users/weak@example.com",
        "accounts.manage",
        "user",
        body={"disabled": True},
        route="/v1/users/{email}",
    ),
    case(
        "DELETE",
        "/v1/users/weak@example.com",
        "accounts.manage",
        "user",
        route="/v1/users/{email}",
    ),
    case(
        "DELETE",
        "/v1/users/weak@example.com/sessions",
        "accounts.manage",
        "user",
        route="/v1/users/{email}/sessions",
    ),
    case("POST", "/v1/service-accounts", "accounts.manage", body={"name": "new-account"}),
    case("GET", "/v1/service-accounts", "accounts.manage", "accounts"),
    case(
        "GET",
        "/v1/service-accounts/spare",
        "accounts.manage",
        "accounts",
        route="/v1/service-accounts/{name}",
    ),
    case(
        "PATCH",
        "/v1/service-accounts/spare",
        "accounts.manage",
        "accounts",
        body={"description": "changed"},
        route="/v1/service-accounts/{name}",
    ),
    case(
        "DELETE",
        "/v1/service-accounts/spare",
        "accounts.manage",
        "accounts",
        route="/v1/service-accounts/{name}",
    ),
    case(
        "GET",
        "/v1/service-accounts/spare/api-keys",
        "accounts.manage",
        "accounts",
        route="/v1/service-accounts/{name}/api-keys",
    ),
    case(
        "POST",
        "/v1/service-accounts/spare/api-keys",
        "accounts.manage",
        "accounts",
        body={"name": "another"},
        route="/v1/service-accounts/{name}/api-keys",
    ),
    case(
        "DELETE",
        "/v1/service-accounts/spare/api-keys/spare-key",
        "accounts.manage",
        "accounts",
        route="/v1/service-accounts/{name}/api-keys/{key_name}",
    ),
]


async def prepare(
    owner: httpx.AsyncClient, app: FastAPI, password_hash: str, needs: frozenset[str]
) -> dict[str, str]:
    """Create, as the owner, what the case's route acts on; answers values for the path."""
    values: dict[str, str] = {}
    if needs & {"service", "run", "secrets", "schedule"}:  # a secret is bound to demo/ping
        response = await owner.post("/v1/services", json={"slug": "demo", **SERVICE})
        assert response.status_code == 201, response.text
    if "secrets" in needs:
        await create_secret(owner, "VAULT", "first", refresh_endpoint="demo/ping")
        await create_secret(owner, "DOOMED", "doomed")
        response = await owner.put("/v1/secrets/VAULT/value", json={"value": "second"})
        assert response.status_code == 200, response.text
    if "run" in needs:
        response = await owner.get("/api/services/demo/ping")
        assert response.status_code == 200, response.text
        values["run_id"] = response.json()["run_id"]
    if "accounts" in needs:
        response = await owner.post("/v1/roles", json={"name": "spare"})
        assert response.status_code == 201, response.text
        response = await owner.post("/v1/service-accounts", json={"name": "spare"})
        assert response.status_code == 201, response.text
        response = await owner.post(
            "/v1/service-accounts/spare/api-keys", json={"name": "spare-key"}
        )
        assert response.status_code == 201, response.text
    if "schedule" in needs:
        response = await owner.post("/v1/roles", json={"name": "runner"})
        assert response.status_code == 201, response.text
        response = await owner.post("/v1/service-accounts", json={"name": "night-bot"})
        assert response.status_code == 201, response.text
        schedule = {
            "name": "nightly",
            "service": "demo",
            "endpoint": "ping",
            "cron": "0 3 * * *",
            "run_as": "night-bot",
        }
        response = await owner.post("/v1/schedules", json=schedule)
        assert response.status_code == 201, response.text
    if "webhook" in needs:
        webhook = {"name": "ops", "url": "http://127.0.0.1:9/hook"}
        response = await owner.post("/v1/webhooks", json=webhook)
        assert response.status_code == 201, response.text
    if "provider" in needs:
        await create_secret(owner, "IDP_CLIENT_ID", "client-id")
        response = await owner.post("/v1/providers", json={"name": "idp", **PROVIDER})
        assert response.status_code == 201, response.text
    if "user" in needs:
        await add_user(app, "weak@example.com", password_hash)
    return values


def test_the_matrix_covers_every_guarded_route(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.auth.test_route_guards import _fresh_app

    guarded = set(route_guards(_fresh_app(tmp_path_factory.mktemp("matrix"))))
    guarded -= set(PUBLIC) | CALLERS_OWN
    covered = {(row.method, row.route or row.path) for row in MATRIX}
    assert guarded - covered == set()
    assert covered - guarded == set()


@pytest.mark.parametrize("row", MATRIX, ids=[row.id for row in MATRIX])
async def test_permission_matrix(
    row: Case,
    app: FastAPI,
    client: httpx.AsyncClient,
    anonymous_client: httpx.AsyncClient,
    callers: Callers,
    owner_password_hash: str,
) -> None:
    path = row.path.format(**await prepare(client, app, owner_password_hash, row.needs))
    wrong = await callers.holding(row.wrong)
    right = await callers.holding(row.needed)

    anonymous = await anonymous_client.request(row.method, path, json=row.body)
    error = error_of(anonymous, 401)
    assert error["type"] == "not_authenticated"
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"

    assert_refused(await wrong.request(row.method, path, json=row.body), row.named or row.needed)

    allowed = await right.request(row.method, path, json=row.body)
    if row.allowed_status is not None:
        assert allowed.status_code == row.allowed_status, allowed.text
    else:
        assert 200 <= allowed.status_code < 300, allowed.text


class TestNoProbingWithoutCredentials:
    async def test_refresh_answers_401_whether_or_not_the_secret_exists(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "UNBOUND", "value")
        for path in ("/refresh/UNBOUND", "/refresh/MISSING"):
            response = await anonymous_client.get(path)
            assert response.status_code == 401, (path, response.text)
