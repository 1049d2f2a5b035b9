"""Deliveries end to end: the token server fails, the runner marks the secrets, a signed webhook
reaches a real receiver on loopback."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from app.notifications.notifier import Notifier
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    OWNER_PASSWORD,
    TokenServer,
    secret_value,
    setup_oauth,
)
from tests.notifications.conftest import Delivery, Receiver, create_webhook, wait_for

TARGETS = ("ACCESS_TOKEN", "REFRESH_TOKEN")


async def refresh(client: httpx.AsyncClient, expected: int = 200, **params: Any) -> str:
    """`GET /refresh/ACCESS_TOKEN`; answers the run id."""
    response = await client.get("/refresh/ACCESS_TOKEN", params=params)
    assert response.status_code == expected, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def by_secret(deliveries: list[Any]) -> dict[str, Any]:
    """Delivery payloads keyed by their secret."""
    return {d.json()["secret"]: d.json() for d in deliveries}


class TestTokenServerSwitchedOff:
    async def test_each_target_gets_one_signed_failing_delivery(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        await setup_oauth(client, token_server)
        everything = await create_webhook(client, "everything", f"{receiver.url}/global")
        access = await create_webhook(
            client, "access", f"{receiver.url}/access", secret_name="ACCESS_TOKEN"
        )
        refresh_only = await create_webhook(
            client, "refresh", f"{receiver.url}/refresh", secret_name="REFRESH_TOKEN"
        )
        await refresh(client)
        assert await notifier.idle(5)
        assert receiver.all() == []  # ok -> ok is no news

        token_server.state.fault = "http_500"
        run_id = await refresh(client, 502)

        await wait_for(lambda: len(receiver.all()) == 4)
        global_ = receiver.at("/global")
        assert sorted(d.json()["secret"] for d in global_) == sorted(TARGETS)
        assert all(d.verifies(everything) for d in global_)
        [to_access] = receiver.at("/access")
        assert to_access.json()["secret"] == "ACCESS_TOKEN" and to_access.verifies(access)
        [to_refresh] = receiver.at("/refresh")
        assert to_refresh.json()["secret"] == "REFRESH_TOKEN" and to_refresh.verifies(refresh_only)
        # A signature made with another webhook's secret doesn't pass, nor a tampered body.
        assert not to_access.verifies(everything)
        tampered = to_access.body.replace(b'"failure_count":1', b'"failure_count":0')
        assert tampered != to_access.body
        assert not Delivery(to_access.path, to_access.headers, tampered).verifies(access)

        for delivery in receiver.all():
            body = delivery.json()
            assert set(body) == {
                "id",
                "type",
                "occurred_at",
                "secret",
                "status",
                "previous_status",
                "failure_count",
                "last_error",
                "run_id",
            }
            assert body["type"] == "secret.failing" == delivery.event
            assert body["status"] == "failing" and body["previous_status"] == "ok"
            assert body["failure_count"] == 1
            assert body["last_error"].startswith("upstream_ambiguous (transient)")
            assert body["run_id"] == run_id
            assert body["occurred_at"].endswith("Z")
            assert delivery.headers["content-type"] == "application/json"
            assert delivery.headers["webhook-signature"].startswith("v1,")
            assert delivery.headers["webhook-id"] == delivery.headers["x-tokenfarm-delivery"]
            assert delivery.headers["x-tokenfarm-signature"].startswith("v1=")
            assert len(delivery.headers["x-tokenfarm-delivery"]) == 36
        # One event per secret: the global webhook and the per-secret one share its id.
        ids = {d.json()["secret"]: d.json()["id"] for d in global_}
        assert to_access.json()["id"] == ids["ACCESS_TOKEN"]
        assert ids["ACCESS_TOKEN"] != ids["REFRESH_TOKEN"]
        assert len({d.headers["x-tokenfarm-delivery"] for d in receiver.all()}) == 4

    async def test_a_second_failure_sends_nothing_more(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        await setup_oauth(client, token_server)
        await create_webhook(client, "everything", f"{receiver.url}/global")
        token_server.state.fault = "http_500"
        await refresh(client, 502)
        await wait_for(lambda: len(receiver.all()) == 2)

        await refresh(client, 502)
        assert await notifier.idle(5)

        assert len(receiver.all()) == 2
        secret = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert secret["failure_count"] == 2

    async def test_success_afterwards_sends_recovered(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        await setup_oauth(client, token_server)
        signing_secret = await create_webhook(client, "everything", f"{receiver.url}/global")
        token_server.state.fault = "http_500"
        await refresh(client, 502)
        await wait_for(lambda: len(receiver.all()) == 2)

        token_server.state.fault = None
        run_id = await refresh(client)

        await wait_for(lambda: len(receiver.all()) == 4)
        recovered = [d for d in receiver.all() if d.event == "secret.recovered"]
        bodies = by_secret(recovered)
        assert set(bodies) == set(TARGETS)
        for body in bodies.values():
            assert body["type"] == "secret.recovered"
            assert body["status"] == "ok" and body["previous_status"] == "failing"
            assert body["failure_count"] == 0 and body["last_error"] is None
            assert body["run_id"] == run_id
        assert all(d.verifies(signing_secret) for d in recovered)


async def into_needs_reauth(
    client: httpx.AsyncClient, token_server: TokenServer, receiver: Receiver
) -> str:
    """The canonical refresh with a global webhook, refused with invalid_grant once: both
    targets are `needs_reauth` and their two deliveries arrived. Answers the signing secret."""
    await setup_oauth(client, token_server)
    signing_secret = await create_webhook(client, "everything", f"{receiver.url}/global")
    token_server.state.queue_faults("invalid_grant")
    await refresh(client, 502)
    await wait_for(lambda: len(receiver.all()) == 2)
    return signing_secret


class TestNeedsReauth:
    async def test_invalid_grant_sends_needs_reauth_and_a_forced_success_recovers(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        signing_secret = await into_needs_reauth(client, token_server, receiver)
        bodies = by_secret(receiver.all())
        assert set(bodies) == set(TARGETS)
        for body in bodies.values():
            assert body["type"] == "secret.needs_reauth"
            assert body["status"] == "needs_reauth" and body["previous_status"] == "ok"
            assert "invalid_grant" in body["last_error"]
        assert all(d.verifies(signing_secret) for d in receiver.all())

        await refresh(client, 409)  # refused without a run of the token endpoint: no news
        assert await notifier.idle(5)
        assert len(receiver.all()) == 2

        await refresh(client, force="true")
        await wait_for(lambda: len(receiver.all()) == 4)
        recovered = by_secret(receiver.all()[2:])
        assert {b["previous_status"] for b in recovered.values()} == {"needs_reauth"}
        assert {b["type"] for b in recovered.values()} == {"secret.recovered"}

    async def test_failing_then_needs_reauth_is_its_own_event(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        await setup_oauth(client, token_server)
        await create_webhook(
            client, "reauth", f"{receiver.url}/reauth", events=["secret.needs_reauth"]
        )
        token_server.state.fault = "http_500"
        await refresh(client, 502)
        token_server.state.fault = "invalid_grant"
        await refresh(client, 502)

        await wait_for(lambda: len(receiver.all()) == 2)
        assert await notifier.idle(5)
        bodies = by_secret(receiver.all())
        assert {b["type"] for b in bodies.values()} == {"secret.needs_reauth"}
        assert {b["previous_status"] for b in bodies.values()} == {"failing"}
        assert {b["failure_count"] for b in bodies.values()} == {2}


class TestRecoveredByHand:
    async def test_setting_the_refresh_token_by_hand_sends_recovered_for_both(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        signing_secret = await into_needs_reauth(client, token_server, receiver)

        # After consent, a person sets the new refresh token: it and the access token refreshed
        # with it leave needs_reauth, and whoever was told they broke hears they are fine.
        new_grant = token_server.state.issue_refresh_token(CLIENT_ID)
        response = await client.put("/v1/secrets/REFRESH_TOKEN/value", json={"value": new_grant})
        assert response.status_code == 200, response.text

        await wait_for(lambda: len(receiver.all()) == 4)
        recovered = receiver.all()[2:]
        bodies = by_secret(recovered)
        assert set(bodies) == set(TARGETS)
        for body in bodies.values():
            assert body["type"] == "secret.recovered"
            assert body["status"] == "ok" and body["previous_status"] == "needs_reauth"
            assert body["failure_count"] == 0 and body["last_error"] is None
            assert body["run_id"] is None
            assert new_grant not in str(body)
        assert all(d.verifies(signing_secret) for d in recovered)
        for name in TARGETS:
            assert (await client.get(f"/v1/secrets/{name}")).json()["status"] == "ok"

        # A second value by hand changes no status: nothing more is sent.
        response = await client.put("/v1/secrets/REFRESH_TOKEN/value", json={"value": new_grant})
        assert response.status_code == 200, response.text
        assert await notifier.idle(5)
        assert len(receiver.all()) == 4


class TestChoosingWebhooks:
    async def test_events_filter_and_disabled_webhooks(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        await setup_oauth(client, token_server)
        await create_webhook(
            client, "recoveries", f"{receiver.url}/recoveries", events=["secret.recovered"]
        )
        await create_webhook(client, "off", f"{receiver.url}/off", enabled=False)
        token_server.state.fault = "http_500"
        await refresh(client, 502)
        token_server.state.fault = None
        await refresh(client)

        await wait_for(lambda: len(receiver.all()) == 2)
        assert await notifier.idle(5)
        assert receiver.at("/off") == []
        assert {d.event for d in receiver.at("/recoveries")} == {"secret.recovered"}

        response = await client.patch("/v1/webhooks/off", json={"enabled": True})
        assert response.status_code == 200, response.text
        token_server.state.fault = "http_500"
        await refresh(client, 502)
        await wait_for(lambda: len(receiver.at("/off")) == 2)

    async def test_a_secret_outside_the_run_is_not_notified(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        await setup_oauth(client, token_server)
        await create_webhook(
            client, "client", f"{receiver.url}/client", secret_name="CLIENT_SECRET"
        )
        token_server.state.fault = "http_500"
        await refresh(client, 502)

        assert await notifier.idle(5)
        assert receiver.all() == []


class TestRetries:
    async def test_two_503s_then_delivered_on_the_third_attempt(
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
        receiver.answers = [503, 503]
        token_server.state.fault = "http_500"
        await refresh(client, 502)

        await wait_for(lambda: len(receiver.all()) == 3)
        assert await notifier.idle(5)
        attempts = receiver.all()
        assert len(attempts) == 3
        # The same delivery each time (one message id), signed afresh each time.
        assert len({d.headers["x-tokenfarm-delivery"] for d in attempts}) == 1
        assert {d.headers["webhook-id"] for d in attempts} == {
            attempts[0].headers["x-tokenfarm-delivery"]
        }
        assert len({d.body for d in attempts}) == 1
        assert all(d.verifies(signing_secret) for d in attempts)
        found = (await client.get("/v1/webhooks/flaky")).json()
        assert found["last_delivery_status"] == "delivered"
        assert found["last_delivery_error"] is None
        assert found["last_delivery_at"] is not None

    async def test_gives_up_after_the_last_attempt_and_says_why(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        await setup_oauth(client, token_server)
        await create_webhook(client, "down", f"{receiver.url}/down", secret_name="ACCESS_TOKEN")
        receiver.answers = [500] * 10
        token_server.state.fault = "http_500"
        await refresh(client, 502)

        await wait_for(lambda: len(receiver.all()) == 5)
        assert await notifier.idle(5)
        assert len(receiver.all()) == 5
        found = (await client.get("/v1/webhooks/down")).json()
        assert found["last_delivery_status"] == "failed"
        assert found["last_delivery_error"] == "answered 500 (attempt 5 of 5)"

    async def test_a_4xx_answer_is_not_retried(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        await setup_oauth(client, token_server)
        await create_webhook(client, "picky", f"{receiver.url}/picky", secret_name="ACCESS_TOKEN")
        receiver.answers = [400]
        token_server.state.fault = "http_500"
        await refresh(client, 502)

        await wait_for(lambda: len(receiver.all()) == 1)
        assert await notifier.idle(5)
        assert len(receiver.all()) == 1
        found = (await client.get("/v1/webhooks/picky")).json()
        assert found["last_delivery_error"] == "answered 400 (attempt 1 of 5)"

    async def test_an_unreachable_receiver_is_retried_then_given_up(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        notifier: Notifier,
        unused_port_url: str,
    ) -> None:
        await setup_oauth(client, token_server)
        await create_webhook(
            client, "nowhere", f"{unused_port_url}/hook/s3cr3t-path", secret_name="ACCESS_TOKEN"
        )
        token_server.state.fault = "http_500"
        await refresh(client, 502)

        await wait_for(lambda: notifier_done(notifier), what="the delivery to give up")
        found = (await client.get("/v1/webhooks/nowhere")).json()
        assert found["last_delivery_status"] == "failed"
        error = found["last_delivery_error"]
        assert error.startswith("upstream_unreachable") and error.endswith("(attempt 5 of 5)")
        assert "s3cr3t-path" not in error

    async def test_deleting_the_webhook_stops_its_retries(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
    ) -> None:
        # The first retry waits 1.5-3 s: time enough to delete the webhook.
        notifier.policy = type(notifier.policy)(attempts=5, base_delay_seconds=3.0)
        await setup_oauth(client, token_server)
        await create_webhook(client, "doomed", f"{receiver.url}/doomed", secret_name="ACCESS_TOKEN")
        receiver.answers = [503] * 10
        token_server.state.fault = "http_500"
        await refresh(client, 502)
        await wait_for(lambda: len(receiver.all()) == 1)

        assert (await client.delete("/v1/webhooks/doomed")).status_code == 204

        assert await notifier.idle(10)
        assert len(receiver.all()) == 1


def notifier_done(notifier: Notifier) -> bool:
    """Whether the notifier has nothing pending."""
    return not notifier._tasks


@pytest.fixture
def unused_port_url() -> str:
    """A loopback URL where nothing listens."""
    from tests.processes import free_port

    return f"http://127.0.0.1:{free_port()}"


class TestNothingSecretLeaves:
    async def test_no_value_in_any_delivery_or_log_line(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        receiver: Receiver,
        notifier: Notifier,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        tokens: set[str] = set()

        async def keep_tokens() -> None:
            for name in TARGETS:
                tokens.add(await secret_value(client, name))

        with caplog.at_level(logging.DEBUG):
            oauth = await setup_oauth(client, token_server)
            signing_secret = await create_webhook(
                client, "everything", f"{receiver.url}/hook-path-canary-77"
            )
            await refresh(client)
            await keep_tokens()
            token_server.state.fault = "http_500"
            await refresh(client, 502)
            token_server.state.fault = None
            await refresh(client)
            await keep_tokens()
            token_server.state.queue_faults("invalid_grant")
            await refresh(client, 502)
            await refresh(client, force="true")
            await keep_tokens()
            await wait_for(lambda: len(receiver.all()) == 8)
            assert await notifier.idle(5)

        canaries = {CLIENT_ID, CLIENT_SECRET, OWNER_PASSWORD, oauth.refresh_token, *tokens}
        assert len(canaries) > 6
        for delivery in receiver.all():
            seen = delivery.body.decode() + repr(delivery.headers)
            assert not [c for c in canaries if c in seen], delivery.json()
            assert signing_secret not in seen
        logged = caplog.text
        assert not [c for c in canaries if c in logged]
        assert signing_secret not in logged
        # A webhook URL's path may be a credential: tokenfarm's own lines never show it (the
        # database driver's DEBUG lines show every parameter, the URL column included).
        ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("tokenfarm"))
        assert "hook-path-canary-77" not in ours
        assert "webhook everything: secret.failing delivery" in ours
