"""Rotation safety end to end: refreshes against the bundled token server (strict rotation,
reuse detection that revokes the token family), counted at the server.

A refresh whose answer is lost after the server rotated the token (`http_500_after_commit`,
`hang`) is not retried: the refresh token is presented once. The next refresh presents the
spent token (it is the only one tokenfarm has), the server refuses it (`invalid_grant`), and the
error says why; the secret goes to `needs_reauth`.
"""

from __future__ import annotations

from typing import Any

import httpx

from app.pipeline.rotation import REUSE_GRACE_RETRY, SPENT_BY_LOST_ANSWER
from tests.conftest import CLIENT_ID, TokenServer, secret_value, setup_oauth
from tests.runs.test_retries import refresh_with_policy


async def metadata(client: httpx.AsyncClient, name: str = "ACCESS_TOKEN") -> dict[str, Any]:
    """A secret's metadata (status, last_error, failure_count)."""
    response = await client.get(f"/v1/secrets/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def run_detail(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """A run's record from the log."""
    response = await client.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class TestServerErrorAfterCommit:
    async def test_refresh_token_is_presented_once_and_the_failure_explains_itself(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        setup = await setup_oauth(client, token_server)
        token_server.state.queue_faults("http_500_after_commit")

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "upstream_ambiguous"
        assert "may have rotated the refresh token" in error["message"]
        assert "retrying" not in error["message"]
        # One call, no retry: the server rotated the token, and nothing presented it again.
        assert token_server.state.token_requests == 1
        assert token_server.state.reused_refresh_tokens == 0
        assert not token_server.state.is_active(setup.refresh_token)
        assert await secret_value(client, "REFRESH_TOKEN") == setup.refresh_token
        secret = await metadata(client)
        assert secret["status"] == "failing"
        assert secret["last_error"].startswith("upstream_ambiguous (transient): ")
        assert "reconnect the secret, or set a new refresh token" in secret["last_error"]
        run = await run_detail(client, response.json()["run_id"])
        assert run["error_type"] == "upstream_ambiguous"
        assert setup.refresh_token not in response.text + str(run) + str(secret)

    async def test_next_refresh_is_refused_and_says_the_lost_answer_spent_the_token(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        token_server.state.queue_faults("http_500_after_commit")
        first = await client.get("/refresh/ACCESS_TOKEN")
        assert first.status_code == 502, first.text

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "upstream_error"
        assert error["oauth_error"] == "invalid_grant"
        assert SPENT_BY_LOST_ANSWER in error["message"]
        assert error["lost_answer_run_id"] == first.json()["run_id"]
        assert token_server.state.token_requests == 2
        assert token_server.state.reused_refresh_tokens == 1  # by the next run, not a retry
        secret = await metadata(client)
        assert secret["status"] == "needs_reauth"
        assert SPENT_BY_LOST_ANSWER in secret["last_error"]

    async def test_invalid_grant_without_a_lost_answer_says_nothing_of_one(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        # A definite refusal before: the server answered, so no answer was lost.
        token_server.state.queue_faults("invalid_client", "invalid_grant")
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 502

        response = await client.get("/refresh/ACCESS_TOKEN")

        error = response.json()["error"]
        assert error["oauth_error"] == "invalid_grant"
        assert SPENT_BY_LOST_ANSWER not in error["message"]
        assert "lost_answer_run_id" not in error
        assert (await metadata(client))["status"] == "needs_reauth"

    async def test_a_value_set_by_hand_ends_the_suspicion(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        token_server.state.queue_faults("http_500_after_commit")
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 502
        fresh = token_server.state.issue_refresh_token(CLIENT_ID)
        put = await client.put("/v1/secrets/REFRESH_TOKEN/value", json={"value": fresh})
        assert put.status_code == 200, put.text
        token_server.state.queue_faults("invalid_grant")

        response = await client.get("/refresh/ACCESS_TOKEN")

        error = response.json()["error"]
        assert error["oauth_error"] == "invalid_grant"
        assert SPENT_BY_LOST_ANSWER not in error["message"]

    async def test_reuse_grace_policy_retries_and_the_spent_token_is_refused_at_once(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        # What the policy is for: a server with a reuse grace period. The bundled server has
        # none, so the retry presents the spent token and the family is revoked; the error
        # says why in the same run.
        await refresh_with_policy(
            client, token_server, {"attempts": 3, "base_delay_seconds": 0.01, **REUSE_GRACE_RETRY}
        )
        token_server.state.queue_faults("http_500_after_commit")

        response = await client.get("/refresh/ACCESS_TOKEN")

        error = response.json()["error"]
        assert error["oauth_error"] == "invalid_grant"
        assert SPENT_BY_LOST_ANSWER in error["message"]
        assert token_server.state.token_requests == 2
        assert token_server.state.reused_refresh_tokens == 1


class TestTimeoutAfterSending:
    async def test_timed_out_refresh_is_not_retried(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        setup = await setup_oauth(client, token_server)
        token_server.state.hang_seconds = 1.5  # the node's timeout is 1 s
        token_server.state.queue_faults("hang")

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 504, response.text
        error = response.json()["error"]
        assert error["type"] == "upstream_ambiguous"
        assert "no answer within 1 s" in error["message"]
        assert "attempts" not in error
        assert token_server.state.token_requests == 1
        assert await secret_value(client, "REFRESH_TOKEN") == setup.refresh_token


class TestRefreshesInARow:
    async def test_twenty_refreshes_rotate_with_twenty_calls(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        setup = await setup_oauth(client, token_server)
        seen = {setup.refresh_token}

        for _ in range(20):
            response = await client.get("/refresh/ACCESS_TOKEN")
            assert response.status_code == 200, response.text
            seen.add(await secret_value(client, "REFRESH_TOKEN"))

        assert token_server.state.token_requests == 20
        assert token_server.state.reused_refresh_tokens == 0
        assert len(seen) == 21
