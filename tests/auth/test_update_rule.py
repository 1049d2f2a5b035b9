"""The update rule: a run writes a secret only when its actor holds
`secrets.update_from_service:NAME`; a forbidden write is refused before any outbound call."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.auth.conftest import Callers
from tests.conftest import TokenServer, secret_value, setup_oauth

RUN = "services.run:oauth"
UPDATE_ACCESS = "secrets.update_from_service:ACCESS_TOKEN"
UPDATE_REFRESH = "secrets.update_from_service:REFRESH_TOKEN"


async def snapshot(owner: httpx.AsyncClient) -> dict[str, Any]:
    """The two target secrets' values and metadata, to show a refused run changed nothing."""
    state: dict[str, Any] = {}
    for name in ("ACCESS_TOKEN", "REFRESH_TOKEN"):
        response = await owner.get(f"/v1/secrets/{name}")
        assert response.status_code == 200, response.text
        state[name] = {**response.json(), "value": await secret_value(owner, name)}
    return state


def refused_run(response: httpx.Response, permission: str) -> None:
    """A failed run answering 403 whose error names the permission."""
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["status"] == "failed", body
    assert body["error"]["type"] == "permission_denied", body
    assert body["error"]["permission"] == permission, body
    assert permission in body["error"]["message"], body


class TestUpdateRule:
    @pytest.mark.parametrize(
        ("held", "missing"),
        [
            ((RUN,), UPDATE_ACCESS),
            ((RUN, UPDATE_ACCESS), UPDATE_REFRESH),
            ((RUN, UPDATE_REFRESH), UPDATE_ACCESS),
            ((RUN, "secrets.update_from_service:ACCESS_*"), UPDATE_REFRESH),
            ((RUN, "secrets.read:*"), UPDATE_ACCESS),
        ],
        ids=["run-only", "access-only", "refresh-only", "prefix-too-narrow", "read-is-not-update"],
    )
    async def test_a_missing_update_permission_refuses_before_any_outbound_call(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        callers: Callers,
        held: tuple[str, ...],
        missing: str,
    ) -> None:
        await setup_oauth(client, token_server)
        before = await snapshot(client)
        caller = await callers.holding(*held)

        refused_run(await caller.get("/refresh/ACCESS_TOKEN"), missing)
        refused_run(await caller.get("/api/services/oauth/refresh-token"), missing)

        assert token_server.state.token_requests == 0
        assert token_server.state.requests == []
        assert await snapshot(client) == before

    @pytest.mark.parametrize(
        "held",
        [
            (RUN, UPDATE_ACCESS, UPDATE_REFRESH),
            ("services.run:oauth/refresh-token", UPDATE_ACCESS, UPDATE_REFRESH),
            (RUN, "secrets.update_from_service:*"),
            (RUN, "secrets.*"),
        ],
        ids=["both", "by-endpoint", "wildcard", "secrets-prefix"],
    )
    async def test_with_run_and_update_permissions_the_refresh_rotates_both_secrets(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        callers: Callers,
        held: tuple[str, ...],
    ) -> None:
        setup = await setup_oauth(client, token_server)
        caller = await callers.holding(*held)

        response = await caller.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 200, response.text
        assert response.json()["status"] == "succeeded"
        assert response.json()["version"] == 1
        assert token_server.state.token_requests == 1
        access = await secret_value(client, "ACCESS_TOKEN")
        refresh = await secret_value(client, "REFRESH_TOKEN")
        assert token_server.state.is_active(access)
        assert refresh != setup.refresh_token
        assert token_server.state.is_active(refresh)

    async def test_the_run_records_who_wrote_the_secret(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await setup_oauth(client, token_server)
        caller = await callers.holding(RUN, UPDATE_ACCESS, UPDATE_REFRESH, name="refresher")

        assert (await caller.get("/refresh/ACCESS_TOKEN")).status_code == 200

        versions = (await client.get("/v1/secrets/ACCESS_TOKEN/versions")).json()
        assert versions[0]["actor"] == "service_account:refresher", versions

    async def test_without_run_permission_the_update_permission_is_not_enough(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await setup_oauth(client, token_server)
        caller = await callers.holding(UPDATE_ACCESS, UPDATE_REFRESH)

        response = await caller.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 403, response.text
        # A caller with no run permission at all is not told which endpoint the secret uses.
        assert response.json()["error"]["permission"] == "services.run:SLUG"
        assert token_server.state.token_requests == 0
        direct = await caller.get("/api/services/oauth/refresh-token")
        assert direct.status_code == 403, direct.text
        assert direct.json()["error"]["permission"] == RUN
        assert token_server.state.token_requests == 0
