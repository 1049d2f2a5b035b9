"""Deliveries a receiver verifies with the reference implementation of Standard Webhooks (the
`standardwebhooks` package), through a signing secret's rotation and its grace period."""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update
from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks import WebhookVerificationError

from app.config import Settings
from app.db import utcnow
from app.errors import Conflict
from app.notifications.models import Webhook
from app.notifications.notifier import Notifier
from app.notifications.schemas import SecretRotation
from app.notifications.signing import standard_form
from app.notifications.store import WebhookStore
from tests.conftest import TokenServer, setup_oauth
from tests.notifications.conftest import Delivery, Receiver, create_webhook, wait_for


async def ping(client: httpx.AsyncClient, name: str = "ops") -> None:
    """`POST /v1/webhooks/{name}/test`, which must be delivered."""
    response = await client.post(f"/v1/webhooks/{name}/test")
    assert response.status_code == 200, response.text
    assert response.json()["delivered"] is True, response.text


async def rotate(client: httpx.AsyncClient, name: str = "ops", **body: Any) -> dict[str, Any]:
    """`POST /v1/webhooks/{name}/rotate-secret`; answers the webhook with its new secret."""
    response = await client.post(f"/v1/webhooks/{name}/rotate-secret", json=body or None)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def refused(delivery: Delivery, signing_secret: str, **changed: str) -> bool:
    """Whether the reference implementation refuses the delivery with some headers changed."""
    headers = {**delivery.headers, **changed}
    try:
        StandardWebhook(signing_secret).verify(delivery.body, headers)
    except WebhookVerificationError:
        return True
    return False


class TestReferenceImplementation:
    async def test_an_event_delivery_verifies_and_a_tampered_one_does_not(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        await setup_oauth(client, token_server)
        signing_secret = await create_webhook(
            client, "access", f"{receiver.url}/access", secret_name="ACCESS_TOKEN"
        )
        other = await create_webhook(client, "other", f"{receiver.url}/other")
        token_server.state.fault = "http_500"
        response = await client.get("/refresh/ACCESS_TOKEN")
        assert response.status_code == 502, response.text

        await wait_for(lambda: len(receiver.at("/access")) == 1)
        [delivery] = receiver.at("/access")
        assert signing_secret.startswith("whsec_")
        event = StandardWebhook(signing_secret).verify(delivery.body, delivery.headers)
        assert event["type"] == "secret.failing" and event["secret"] == "ACCESS_TOKEN"
        assert len(delivery.headers["webhook-signature"].split(" ")) == 1
        # Nothing about the message can change unnoticed: body, timestamp, id, signature.
        tampered = delivery.body.replace(b'"failure_count":1', b'"failure_count":0')
        assert tampered != delivery.body
        assert refused(Delivery(delivery.path, delivery.headers, tampered), signing_secret)
        sent_at = int(delivery.headers["webhook-timestamp"])
        assert refused(delivery, signing_secret, **{"webhook-timestamp": str(sent_at - 1)})
        assert refused(delivery, signing_secret, **{"webhook-id": "another-message"})
        assert refused(delivery, signing_secret, **{"webhook-signature": "v1,AAAA"})
        assert refused(delivery, other)

    async def test_a_retry_keeps_its_message_id_and_verifies(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        await setup_oauth(client, token_server)
        signing_secret = await create_webhook(
            client, "flaky", f"{receiver.url}/flaky", secret_name="ACCESS_TOKEN"
        )
        receiver.answers = [503]
        token_server.state.fault = "http_500"
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 502

        await wait_for(lambda: len(receiver.all()) == 2)
        assert await notifier.idle(5)
        first, second = receiver.all()
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.body == second.body
        assert first.verifies(signing_secret) and second.verifies(signing_secret)


class TestRotation:
    async def test_both_secrets_verify_during_the_grace_period(
        self, client: httpx.AsyncClient, receiver: Receiver
    ) -> None:
        old = await create_webhook(client, "ops", f"{receiver.url}/hook")

        rotated = await rotate(client, grace_seconds=3600)

        new = rotated["signing_secret"]
        assert new.startswith("whsec_") and new != old
        expires_at = rotated["previous_secret_expires_at"]
        assert expires_at is not None
        shown = await client.get("/v1/webhooks/ops")
        assert shown.json()["previous_secret_expires_at"] == expires_at
        assert new not in shown.text and old not in shown.text
        await ping(client)
        [delivery] = receiver.all()
        assert len(delivery.headers["webhook-signature"].split(" ")) == 2
        assert delivery.verifies(new) and delivery.verifies(old)
        # The deprecated header carries the newest secret's signature only.
        assert delivery.verifies_legacy(new) and not delivery.verifies_legacy(old)

    async def test_the_default_grace_period_is_a_day(
        self, client: httpx.AsyncClient, receiver: Receiver
    ) -> None:
        old = await create_webhook(client, "ops", f"{receiver.url}/hook")
        before = utcnow()

        response = await client.post("/v1/webhooks/ops/rotate-secret")

        assert response.status_code == 200, response.text
        rotated = response.json()
        expires_at = datetime.fromisoformat(rotated["previous_secret_expires_at"])
        assert before + timedelta(hours=23, minutes=59) < expires_at
        assert expires_at < utcnow() + timedelta(days=1, minutes=1)
        await ping(client)
        [delivery] = receiver.all()
        assert delivery.verifies(old) and delivery.verifies(rotated["signing_secret"])

    async def test_once_the_grace_period_is_over_only_the_new_secret_verifies(
        self, client: httpx.AsyncClient, app: FastAPI, receiver: Receiver
    ) -> None:
        old = await create_webhook(client, "ops", f"{receiver.url}/hook")
        new = (await rotate(client, grace_seconds=3600))["signing_secret"]
        async with app.state.session_factory() as session, session.begin():
            past = utcnow() - timedelta(seconds=1)
            await session.execute(update(Webhook).values(previous_secret_expires_at=past))

        await ping(client)

        [delivery] = receiver.all()
        assert len(delivery.headers["webhook-signature"].split(" ")) == 1
        assert delivery.verifies(new) and not delivery.verifies(old)
        assert (await client.get("/v1/webhooks/ops")).json()["previous_secret_expires_at"] is None

    async def test_a_second_rotation_drops_the_first_secret_and_zero_grace_drops_all(
        self, client: httpx.AsyncClient, receiver: Receiver
    ) -> None:
        first = await create_webhook(client, "ops", f"{receiver.url}/hook")
        second = (await rotate(client, grace_seconds=3600))["signing_secret"]
        third = (await rotate(client, grace_seconds=3600))["signing_secret"]
        await ping(client)
        [during] = receiver.all()
        assert during.verifies(third) and during.verifies(second)
        assert not during.verifies(first)

        fourth = await rotate(client, grace_seconds=0)

        assert fourth["previous_secret_expires_at"] is None
        await ping(client)
        after = receiver.all()[1]
        assert after.verifies(fourth["signing_secret"])
        assert not after.verifies(third) and not after.verifies(second)

    async def test_a_patch_rotation_replaces_the_secret_at_once(
        self, client: httpx.AsyncClient, receiver: Receiver
    ) -> None:
        old = await create_webhook(client, "ops", f"{receiver.url}/hook")
        graced = (await rotate(client, grace_seconds=3600))["signing_secret"]

        response = await client.patch("/v1/webhooks/ops", json={"rotate_secret": True})

        assert response.status_code == 200, response.text
        new = response.json()["signing_secret"]
        assert response.json()["previous_secret_expires_at"] is None
        await ping(client)
        [delivery] = receiver.all()
        assert delivery.verifies(new)
        assert not delivery.verifies(graced) and not delivery.verifies(old)

    async def test_a_pending_retry_is_signed_with_the_secrets_of_its_attempt(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        await setup_oauth(client, token_server)
        old = await create_webhook(
            client, "ops", f"{receiver.url}/hook", secret_name="ACCESS_TOKEN"
        )
        # The first retry waits 0.5-1 s: time enough to rotate the secret.
        notifier.policy = type(notifier.policy)(attempts=2, base_delay_seconds=1.0)
        receiver.answers = [503]
        token_server.state.fault = "http_500"
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 502
        await wait_for(lambda: len(receiver.all()) == 1)

        new = (await rotate(client, grace_seconds=3600))["signing_secret"]

        await wait_for(lambda: len(receiver.all()) == 2)
        first, retry = receiver.all()
        assert first.verifies(old) and not first.verifies(new)
        assert retry.verifies(new) and retry.verifies(old)
        assert first.headers["webhook-id"] == retry.headers["webhook-id"]

    async def test_a_rotation_that_lost_a_race_is_a_conflict_and_answers_no_secret(
        self, client: httpx.AsyncClient, app: FastAPI, settings: Settings, receiver: Receiver
    ) -> None:
        await create_webhook(client, "ops", f"{receiver.url}/hook")
        async with app.state.session_factory() as session, session.begin():
            store = WebhookStore(session, app.state.keyring, settings)
            stale = await store.get("ops")
            # Another request rotates it meanwhile (its own session, committed).
            winner = await rotate(client, grace_seconds=3600)

            with pytest.raises(Conflict, match="changed meanwhile"):
                await store.rotate_secret(stale, SecretRotation(grace_seconds=3600))

        await ping(client)
        [delivery] = receiver.all()
        assert delivery.verifies(winner["signing_secret"])
        assert len(delivery.headers["webhook-signature"].split(" ")) == 2

    @pytest.mark.parametrize(
        ("body", "path"),
        [
            ({"grace_seconds": -1}, "grace_seconds"),
            ({"grace_seconds": 7 * 86400 + 1}, "grace_seconds"),
            ({"grace_seconds": "a day"}, "grace_seconds"),
            ({"grace_seconds": None}, "grace_seconds"),
            ({"grace": 60}, "grace"),
        ],
    )
    async def test_a_bad_grace_period_is_422_and_changes_nothing(
        self, client: httpx.AsyncClient, receiver: Receiver, body: dict[str, Any], path: str
    ) -> None:
        signing_secret = await create_webhook(client, "ops", f"{receiver.url}/hook")

        response = await client.post("/v1/webhooks/ops/rotate-secret", json=body)

        assert response.status_code == 422, response.text
        assert [p["path"] for p in response.json()["error"]["errors"]] == [path]
        await ping(client)
        [delivery] = receiver.all()
        assert delivery.verifies(signing_secret)
        assert len(delivery.headers["webhook-signature"].split(" ")) == 1

    async def test_an_unknown_webhook_is_404(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/v1/webhooks/nope/rotate-secret")

        assert response.status_code == 404, response.text
        assert response.json()["error"]["type"] == "not_found"

    async def test_no_signing_secret_in_any_log_line(
        self, client: httpx.AsyncClient, receiver: Receiver, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.DEBUG):
            old = await create_webhook(client, "ops", f"{receiver.url}/hook")
            new = (await rotate(client, grace_seconds=3600))["signing_secret"]
            await ping(client)

        ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("tokenfarm"))
        assert "webhook ops: ping delivery" in ours
        for signing_secret in (old, new):
            assert signing_secret not in caplog.text
            assert signing_secret.removeprefix("whsec_") not in caplog.text


class TestSecretsMadeBeforeTheStandard:
    async def test_an_older_secret_verifies_in_its_whsec_form_and_by_the_old_header(
        self, client: httpx.AsyncClient, app: FastAPI, receiver: Receiver
    ) -> None:
        await create_webhook(client, "ops", f"{receiver.url}/hook")
        older = secrets.token_urlsafe(32)  # how earlier versions made signing secrets
        async with app.state.session_factory() as session, session.begin():
            ciphertext = app.state.keyring.encrypt(older)
            await session.execute(update(Webhook).values(signing_secret_ciphertext=ciphertext))

        await ping(client)

        [delivery] = receiver.all()
        assert delivery.verifies_legacy(older)
        assert delivery.verifies(standard_form(older))
        assert standard_form(older).startswith("whsec_")

        # Rotating it gives a standard secret; the older one keeps signing for the grace period.
        new = (await rotate(client, grace_seconds=600))["signing_secret"]
        await ping(client)
        during = receiver.all()[1]
        assert during.verifies(new) and during.verifies(standard_form(older))
