"""Rotation safety against django-oauth-toolkit (tests/oauth_server): rotation with reuse
protection and no grace period, the server the issue saw turn 20 refreshes into 60 calls and a
dead grant. Every refresh token presented is counted at the server (by its SHA-256).
"""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from app.pipeline.rotation import SPENT_BY_LOST_ANSWER
from tests.conftest import canonical_action, create_secret, secret_value
from tests.oauth_server import OAuthServer, pkce_pair, sha256_hex

CALLBACK = "http://127.0.0.1:9/connect/callback"


def connect(server: OAuthServer) -> tuple[str, str, str]:
    """Authorization code with PKCE, by hand -> (client id, client secret, refresh token)."""
    client_id, client_secret = server.create_client(redirect_uris=[CALLBACK])
    assert client_secret is not None
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": CALLBACK,
        "scope": "read",
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    location = server.consent(f"{server.authorization_url}?{urlencode(params)}")
    answer = {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}
    assert answer["state"] == state
    response = httpx.post(
        server.token_url,
        data={
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
        },
        auth=(client_id, client_secret),
    )
    assert response.status_code == 200, response.text
    server.reset_log()
    return client_id, client_secret, str(response.json()["refresh_token"])


async def setup_dot_refresh(client: httpx.AsyncClient, server: OAuthServer) -> str:
    """The canonical refresh against DOT, bound to ACCESS_TOKEN; -> the first refresh token."""
    client_id, client_secret, refresh_token = connect(server)
    await create_secret(client, "CLIENT_ID", client_id, environment_specific=False)
    await create_secret(client, "CLIENT_SECRET", client_secret, environment_specific=False)
    await create_secret(client, "REFRESH_TOKEN", refresh_token)
    await create_secret(client, "ACCESS_TOKEN")
    endpoint = {
        "readable_id": "refresh-token",
        "name": "Refresh",
        "enable_log": True,
        "action": canonical_action(server.token_url),
    }
    response = await client.post(
        "/v1/services", json={"slug": "oauth", "name": "OAuth", "endpoints": [endpoint]}
    )
    assert response.status_code == 201, response.text
    response = await client.patch(
        "/v1/secrets/ACCESS_TOKEN", json={"refresh_endpoint": "oauth/refresh-token"}
    )
    assert response.status_code == 200, response.text
    return refresh_token


class TestAgainstDjangoOAuthToolkit:
    async def test_twenty_refreshes_rotate_with_twenty_token_calls(
        self, client: httpx.AsyncClient, oauth_server: OAuthServer
    ) -> None:
        await setup_dot_refresh(client, oauth_server)

        for _ in range(20):
            response = await client.get("/refresh/ACCESS_TOKEN")
            assert response.status_code == 200, response.text

        log = oauth_server.request_log()
        assert [entry["status"] for entry in log] == [200] * 20
        presented = oauth_server.refresh_tokens_presented()
        assert len(presented) == len(set(presented)) == 20
        current = await secret_value(client, "REFRESH_TOKEN")
        assert oauth_server.refresh_token_state(current)["revoked"] is False

    async def test_lost_answer_presents_the_token_once_then_explains_the_refusal(
        self, client: httpx.AsyncClient, oauth_server: OAuthServer
    ) -> None:
        refresh_token = await setup_dot_refresh(client, oauth_server)
        oauth_server.fail_after_processing(1, status=502)

        first = await client.get("/refresh/ACCESS_TOKEN")

        assert first.status_code == 502, first.text
        assert first.json()["error"]["type"] == "upstream_ambiguous"
        # One call: DOT rotated the token, the answer was lost, nothing presented it again.
        assert oauth_server.refresh_tokens_presented() == [sha256_hex(refresh_token)]
        assert oauth_server.request_log()[0]["processed_status"] == 200

        second = await client.get("/refresh/ACCESS_TOKEN")

        assert second.status_code == 502, second.text
        error = second.json()["error"]
        assert error["oauth_error"] == "invalid_grant"
        assert SPENT_BY_LOST_ANSWER in error["message"]
        assert error["lost_answer_run_id"] == first.json()["run_id"]
        # The next run presented it again (the only token tokenfarm had): two calls in all.
        assert oauth_server.refresh_tokens_presented() == [sha256_hex(refresh_token)] * 2
        status = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()["status"]
        assert status == "needs_reauth"
        assert refresh_token not in first.text + second.text
