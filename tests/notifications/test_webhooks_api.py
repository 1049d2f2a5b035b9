"""`/v1/webhooks`: create (signing secret shown once), validation, changes, rotation, ping."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.config import Settings
from app.db import utcnow
from app.events import SecretStatusChanged
from app.notifications.models import Webhook
from app.notifications.notifier import DeliveryPolicy, Notifier
from tests.conftest import create_secret
from tests.notifications.conftest import Receiver, create_webhook, wait_for

ALL_EVENTS = ["secret.failing", "secret.needs_reauth", "secret.recovered", "secret.connected"]


async def problem(response: httpx.Response, status: int = 422) -> dict[str, Any]:
    """The error of a refused request."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


class TestCreate:
    async def test_answers_the_signing_secret_once_and_stores_it_encrypted(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        response = await client.post(
            "/v1/webhooks", json={"name": "ops", "url": "http://127.0.0.1:9/hook"}
        )

        assert response.status_code == 201, response.text
        created = response.json()
        signing_secret = created["signing_secret"]
        assert len(signing_secret) >= 43
        assert created["events"] == ALL_EVENTS
        assert created["secret_name"] is None and created["enabled"] is True
        assert created["created_by"] == "user:owner@example.com"
        assert created["last_delivery_status"] is None
        for path in ("/v1/webhooks", "/v1/webhooks/ops"):
            shown = await client.get(path)
            assert shown.status_code == 200
            assert "signing_secret" not in shown.text and signing_secret not in shown.text
        async with app.state.session_factory() as session:
            row = (await session.execute(select(Webhook))).scalar_one()
        assert signing_secret not in row.signing_secret_ciphertext
        assert app.state.keyring.decrypt(row.signing_secret_ciphertext) == signing_secret

    async def test_each_webhook_gets_its_own_secret(self, client: httpx.AsyncClient) -> None:
        first = await create_webhook(client, "one", "https://hooks.example.com/a")
        second = await create_webhook(client, "two", "https://hooks.example.com/a")

        assert first != second

    async def test_a_per_secret_webhook_with_chosen_events(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "ACCESS_TOKEN", "value")
        body = {
            "name": "access-only",
            "url": "https://hooks.example.com/tokenfarm",
            "secret_name": "ACCESS_TOKEN",
            "events": ["secret.recovered", "secret.failing", "secret.failing"],
            "enabled": False,
            "description": "pager",
        }

        created = (await client.post("/v1/webhooks", json=body)).json()

        assert created["secret_name"] == "ACCESS_TOKEN"
        assert created["events"] == ["secret.failing", "secret.recovered"]
        assert created["enabled"] is False and created["description"] == "pager"

    async def test_a_taken_name_is_409(self, client: httpx.AsyncClient) -> None:
        await create_webhook(client, "ops", "https://hooks.example.com/a")

        response = await client.post(
            "/v1/webhooks", json={"name": "ops", "url": "https://hooks.example.com/b"}
        )

        assert (await problem(response, 409))["type"] == "already_exists"

    async def test_an_unknown_secret_is_422_naming_it(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/v1/webhooks",
            json={"name": "ops", "url": "https://h.example.com/", "secret_name": "MISSING"},
        )

        error = await problem(response)
        assert error["errors"] == [{"path": "secret_name", "message": "no secret 'MISSING'"}]

    @pytest.mark.parametrize(
        ("url", "says"),
        [
            ("ftp://hooks.example.com/x", "http:// or https://"),
            ("hooks.example.com/x", "http:// or https://"),
            ("https:///path", "must name a host"),
            ("https://user:pw@hooks.example.com/x", "credentials"),
            ("https://hooks.example.com/a b", "spaces"),
            ("https://hooks.example.com:99999/", "not a valid URL"),
            ("http://10.0.0.8/hook", "TOKENFARM_EGRESS_ALLOW"),
            ("http://169.254.169.254/latest", "link-local"),
            ("http://[::ffff:10.0.0.1]/", "private"),
            ("", "at least 1 character"),
        ],
    )
    async def test_a_bad_url_is_422_saying_why(
        self, client: httpx.AsyncClient, url: str, says: str
    ) -> None:
        response = await client.post("/v1/webhooks", json={"name": "ops", "url": url})

        error = await problem(response)
        assert error["errors"][0]["path"] == "url"
        assert says in error["message"]

    @pytest.mark.parametrize(
        ("body", "path"),
        [
            ({"events": ["secret.exploded"]}, "events[0]"),
            ({"events": []}, "events"),
            ({"name": "Ops Alerts"}, "name"),
            ({"secret_name": "not a name"}, "secret_name"),
            ({"signing_secret": "mine"}, "signing_secret"),
            ({"enabled": "sometimes"}, "enabled"),
        ],
    )
    async def test_bad_fields_are_422_naming_them(
        self, client: httpx.AsyncClient, body: dict[str, Any], path: str
    ) -> None:
        request = {"name": "ops", "url": "https://hooks.example.com/", **body}

        error = await problem(await client.post("/v1/webhooks", json=request))

        assert [p["path"] for p in error["errors"]] == [path]


class TestChange:
    async def test_patch_changes_only_what_it_names(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "ACCESS_TOKEN", "value")
        signing_secret = await create_webhook(client, "ops", "https://hooks.example.com/a")

        response = await client.patch(
            "/v1/webhooks/ops",
            json={"secret_name": "ACCESS_TOKEN", "events": ["secret.failing"], "enabled": False},
        )

        assert response.status_code == 200, response.text
        changed = response.json()
        assert changed["secret_name"] == "ACCESS_TOKEN"
        assert changed["events"] == ["secret.failing"]
        assert changed["enabled"] is False
        assert changed["url"] == "https://hooks.example.com/a"
        assert changed["signing_secret"] is None
        assert signing_secret not in response.text

        back = await client.patch("/v1/webhooks/ops", json={"secret_name": None})
        assert back.json()["secret_name"] is None

    @pytest.mark.parametrize(
        ("body", "path"),
        [
            ({"url": None}, "url"),
            ({"events": None}, "events"),
            ({"enabled": None}, "enabled"),
            ({"url": "http://192.168.1.10/"}, "url"),
            ({"secret_name": "MISSING"}, "secret_name"),
            ({"name": "renamed"}, "name"),
        ],
    )
    async def test_bad_changes_are_422(
        self, client: httpx.AsyncClient, body: dict[str, Any], path: str
    ) -> None:
        await create_webhook(client, "ops", "https://hooks.example.com/a")

        error = await problem(await client.patch("/v1/webhooks/ops", json=body))

        assert [p["path"] for p in error["errors"]] == [path]

    async def test_delete_then_it_is_gone(self, client: httpx.AsyncClient) -> None:
        await create_webhook(client, "ops", "https://hooks.example.com/a")

        assert (await client.delete("/v1/webhooks/ops")).status_code == 204

        assert (await problem(await client.get("/v1/webhooks/ops"), 404))["type"] == "not_found"
        assert (await client.get("/v1/webhooks")).json() == []
        assert (await client.delete("/v1/webhooks/ops")).status_code == 404

    async def test_unknown_names_are_404(self, client: httpx.AsyncClient) -> None:
        for method in ("GET", "PATCH", "DELETE"):
            response = await client.request(method, "/v1/webhooks/nope", json={})
            assert (await problem(response, 404))["message"] == "webhook 'nope' does not exist"
        assert (await client.post("/v1/webhooks/nope/test")).status_code == 404


class TestPing:
    async def test_a_ping_is_signed_and_reported(
        self, client: httpx.AsyncClient, receiver: Receiver
    ) -> None:
        signing_secret = await create_webhook(client, "ops", f"{receiver.url}/ping", enabled=False)

        response = await client.post("/v1/webhooks/ops/test")

        assert response.status_code == 200, response.text
        result = response.json()
        assert result["delivered"] is True and result["status_code"] == 200
        assert result["error"] is None
        [ping] = receiver.all()  # a disabled webhook can still be tried out
        assert ping.event == "ping" and ping.json()["type"] == "ping"
        assert ping.json()["webhook"] == "ops"
        assert ping.headers["x-tokenfarm-delivery"] == result["delivery_id"]
        assert ping.verifies(signing_secret)
        found = (await client.get("/v1/webhooks/ops")).json()
        assert found["last_delivery_status"] == "delivered"

    async def test_a_rotated_secret_signs_from_then_on(
        self, client: httpx.AsyncClient, receiver: Receiver
    ) -> None:
        old = await create_webhook(client, "ops", f"{receiver.url}/ping")

        response = await client.patch("/v1/webhooks/ops", json={"rotate_secret": True})

        assert response.status_code == 200, response.text
        new = response.json()["signing_secret"]
        assert new and new != old
        assert (await client.post("/v1/webhooks/ops/test")).json()["delivered"] is True
        [ping] = receiver.all()
        assert ping.verifies(new) and not ping.verifies(old)
        assert new not in (await client.get("/v1/webhooks/ops")).text

    async def test_a_failed_ping_says_why_without_the_url_path(
        self, client: httpx.AsyncClient, receiver: Receiver
    ) -> None:
        await create_webhook(client, "ops", f"{receiver.url}/token-in-path-1234")
        receiver.answers = [410]

        result = (await client.post("/v1/webhooks/ops/test")).json()

        assert result["delivered"] is False
        assert result["status_code"] == 410
        assert result["error"] == "answered 410"
        found = (await client.get("/v1/webhooks/ops")).json()
        assert found["last_delivery_status"] == "failed"
        assert found["last_delivery_error"] == "answered 410 (attempt 1 of 1)"


class TestEgressGuard:
    async def test_a_refused_address_is_not_called(
        self, client: httpx.AsyncClient, app: FastAPI, settings: Settings, receiver: Receiver
    ) -> None:
        # The host name passes the check at create time; what it resolves to does not.
        port = receiver.url.rsplit(":", 1)[1]
        await create_webhook(client, "ops", f"http://localhost:{port}/hook")
        guarded = Notifier(
            app.state.session_factory,
            app.state.keyring,
            settings.model_copy(update={"egress_allow": ""}),
        )
        try:
            result = await guarded.ping("ops")
        finally:
            await guarded.aclose()

        assert result.delivered is False
        assert result.error is not None and result.error.startswith("egress_refused")
        assert "loopback" in result.error
        assert receiver.all() == []


class TestShutdown:
    async def test_pending_retries_are_dropped_at_once(
        self,
        client: httpx.AsyncClient,
        app: FastAPI,
        settings: Settings,
        receiver: Receiver,
    ) -> None:
        await create_webhook(client, "ops", f"{receiver.url}/hook")
        receiver.answers = [503] * 5
        notifier = Notifier(
            app.state.session_factory,
            app.state.keyring,
            settings,
            policy=DeliveryPolicy(attempts=5, base_delay_seconds=60),
        )
        notifier.notify(SecretStatusChanged("ANY", "ok", "failing", 1, "x", None, utcnow()))
        await wait_for(lambda: len(receiver.all()) == 1)

        started = time.monotonic()
        await notifier.aclose()

        assert time.monotonic() - started < 2
        await asyncio.sleep(0.1)
        assert len(receiver.all()) == 1
        notifier.notify(SecretStatusChanged("ANY", "ok", "failing", 1, "x", None, utcnow()))
        assert await notifier.idle(1)
        assert len(receiver.all()) == 1
