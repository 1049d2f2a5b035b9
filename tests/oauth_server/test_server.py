"""The test provider itself: real HTTP against django-oauth-toolkit, as tokenfarm will see it."""

from __future__ import annotations

import base64
import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.oauth_server import BOB, OAuthServer, pkce_pair, sha256_hex

CALLBACK = "http://127.0.0.1:9/connect/callback"


def _authorize_url(
    server: OAuthServer, client_id: str, challenge: str | None, state: str, scope: str
) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": CALLBACK,
        "scope": scope,
        "state": state,
    }
    if challenge is not None:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    return f"{server.authorization_url}?{urlencode(params)}"


def _callback_params(location: str) -> dict[str, str]:
    assert location.startswith(CALLBACK), location
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


def _connect(
    server: OAuthServer, scope: str = "openid email read"
) -> tuple[str, str, dict[str, Any]]:
    """Authorization code + PKCE by hand -> (client_id, client_secret, token response)."""
    client_id, client_secret = server.create_client(redirect_uris=[CALLBACK])
    assert client_secret is not None
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    params = _callback_params(
        server.consent(_authorize_url(server, client_id, challenge, state, scope))
    )
    assert params["state"] == state
    response = httpx.post(
        server.token_url,
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
        },
        auth=(client_id, client_secret),
    )
    assert response.status_code == 200, response.text
    return client_id, client_secret, response.json()


def _refresh(server: OAuthServer, client: tuple[str, str], refresh_token: str) -> httpx.Response:
    return httpx.post(
        server.token_url,
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=client,
    )


class TestDiscovery:
    def test_discovery_names_the_server_as_issuer(self, oauth_server: OAuthServer) -> None:
        document = oauth_server.discovery()
        assert document["issuer"] == oauth_server.issuer == oauth_server.base_url
        assert document["token_endpoint"] == oauth_server.token_url
        assert document["authorization_endpoint"] == oauth_server.authorization_url
        assert document["jwks_uri"] == oauth_server.jwks_url
        metadata = httpx.get(oauth_server.metadata_url).json()
        assert metadata["issuer"] == oauth_server.issuer
        assert metadata["revocation_endpoint"] == oauth_server.revocation_url
        assert metadata["introspection_endpoint"] == oauth_server.introspection_url
        keys = httpx.get(oauth_server.jwks_url).json()["keys"]
        assert [key["kty"] for key in keys] == ["RSA"]

    def test_wrong_issuer_fault(self, oauth_server: OAuthServer) -> None:
        oauth_server.wrong_issuer_in_discovery(True)
        assert oauth_server.discovery()["issuer"] == "https://wrong-issuer.example.com"
        metadata = httpx.get(oauth_server.metadata_url).json()
        assert metadata["issuer"] == "https://wrong-issuer.example.com"
        oauth_server.reset_faults()
        assert oauth_server.discovery()["issuer"] == oauth_server.issuer


class TestAuthorizationCode:
    def test_code_with_pkce_ends_with_tokens(self, oauth_server: OAuthServer) -> None:
        client_id, _, tokens = _connect(oauth_server)
        assert tokens["token_type"] == "Bearer"
        assert tokens["refresh_token"] and tokens["id_token"]
        assert tokens["expires_in"] == 60
        claims = json.loads(base64.urlsafe_b64decode(tokens["id_token"].split(".")[1] + "=="))
        assert claims["iss"] == oauth_server.issuer
        assert claims["aud"] == client_id
        introspected = oauth_server.introspect(tokens["access_token"])
        assert introspected["active"] is True
        assert introspected["username"] == "alice@example.com"
        assert set(introspected["scope"].split()) == {"openid", "email", "read"}

    def test_missing_pkce_is_refused(self, oauth_server: OAuthServer) -> None:
        client_id, _ = oauth_server.create_client(redirect_uris=[CALLBACK])
        url = _authorize_url(oauth_server, client_id, None, "s1", "read")
        params = _callback_params(oauth_server.consent(url))
        assert params["error"] == "invalid_request"
        assert "code" not in params

    def test_deny_redirects_with_access_denied(self, oauth_server: OAuthServer) -> None:
        client_id, _ = oauth_server.create_client(redirect_uris=[CALLBACK])
        _, challenge = pkce_pair()
        url = _authorize_url(oauth_server, client_id, challenge, "s2", "read")
        params = _callback_params(oauth_server.consent(url, user=BOB, allow=False))
        assert params == {"error": "access_denied", "state": "s2"}


class TestRefreshRotation:
    def test_refresh_rotates_and_reuse_revokes_the_grant(self, oauth_server: OAuthServer) -> None:
        client_id, client_secret, tokens = _connect(oauth_server, scope="read")
        first = tokens["refresh_token"]
        rotated = _refresh(oauth_server, (client_id, client_secret), first)
        assert rotated.status_code == 200, rotated.text
        second = rotated.json()["refresh_token"]
        assert second != first

        reused = _refresh(oauth_server, (client_id, client_secret), first)
        assert reused.status_code == 400
        assert reused.json()["error"] == "invalid_grant"
        # Reuse protection: the whole grant is gone, the newest refresh token too.
        after = _refresh(oauth_server, (client_id, client_secret), second)
        assert after.status_code == 400
        assert oauth_server.introspect(rotated.json()["access_token"])["active"] is False

    def test_concurrent_refreshes_are_serialised(self, oauth_server: OAuthServer) -> None:
        client_id, client_secret, tokens = _connect(oauth_server, scope="read")
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(
                    lambda _: _refresh(
                        oauth_server, (client_id, client_secret), tokens["refresh_token"]
                    ),
                    range(2),
                )
            )
        assert sorted(answer.status_code for answer in answers) == [200, 400]
        # The loser presented a used token: reuse protection revoked the winner's tokens too.
        winner = next(answer for answer in answers if answer.status_code == 200).json()
        assert oauth_server.refresh_token_state(winner["refresh_token"])["revoked"] is True

    def test_request_log_counts_and_hashes(self, oauth_server: OAuthServer) -> None:
        client_id, client_secret, tokens = _connect(oauth_server, scope="read")
        _refresh(oauth_server, (client_id, client_secret), tokens["refresh_token"])
        log = oauth_server.request_log()
        assert [entry["grant_type"] for entry in log] == ["authorization_code", "refresh_token"]
        assert [entry["status"] for entry in log] == [200, 200]
        assert oauth_server.refresh_tokens_presented() == [sha256_hex(tokens["refresh_token"])]
        assert tokens["refresh_token"] not in str(log)
        assert oauth_server.stderr_path is not None
        assert tokens["refresh_token"] not in oauth_server.stderr_path.read_text()
        oauth_server.reset_log()
        assert oauth_server.request_log() == []

    def test_fail_after_processing_commits_the_rotation(self, oauth_server: OAuthServer) -> None:
        client_id, client_secret, tokens = _connect(oauth_server, scope="read")
        oauth_server.fail_after_processing(1, status=502)
        failed = _refresh(oauth_server, (client_id, client_secret), tokens["refresh_token"])
        assert failed.status_code == 502
        entry = oauth_server.request_log()[-1]
        assert entry["fault"] == "fail_after_processing"
        assert entry["processed_status"] == 200
        # The rotation was committed: the old refresh token is used up.
        assert oauth_server.refresh_token_state(tokens["refresh_token"])["revoked"] is True

    def test_revoke_all_for_user(self, oauth_server: OAuthServer) -> None:
        client_id, client_secret, tokens = _connect(oauth_server, scope="read")
        counts = oauth_server.revoke_all_for("alice@example.com")
        assert counts["refresh_tokens"] >= 1
        assert oauth_server.introspect(tokens["access_token"])["active"] is False
        refused = _refresh(oauth_server, (client_id, client_secret), tokens["refresh_token"])
        assert refused.status_code == 400


class TestDeviceAuthorization:
    @pytest.fixture
    def device_client(self, oauth_server: OAuthServer) -> str:
        client_id, _ = oauth_server.create_client(confidential=False, grant_types="device_code")
        return client_id

    def _start(self, server: OAuthServer, client_id: str) -> dict[str, Any]:
        response = httpx.post(
            server.device_authorization_url, data={"client_id": client_id, "scope": "read"}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def _poll(self, server: OAuthServer, client_id: str, device_code: str) -> httpx.Response:
        return httpx.post(
            server.token_url,
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "device_code": device_code,
                "client_id": client_id,
            },
        )

    def test_approved_device_gets_tokens(
        self, oauth_server: OAuthServer, device_client: str
    ) -> None:
        started = self._start(oauth_server, device_client)
        assert started["verification_uri"] == oauth_server.device_verification_url
        pending = self._poll(oauth_server, device_client, started["device_code"])
        assert pending.json()["error"] == "authorization_pending"

        oauth_server.approve_device(started["user_code"])
        tokens = self._poll(oauth_server, device_client, started["device_code"])
        assert tokens.status_code == 200, tokens.text
        assert oauth_server.introspect(tokens.json()["access_token"])["active"] is True

    def test_slow_down_fault(self, oauth_server: OAuthServer, device_client: str) -> None:
        started = self._start(oauth_server, device_client)
        oauth_server.slow_down_next(1)
        slowed = self._poll(oauth_server, device_client, started["device_code"])
        assert (slowed.status_code, slowed.json()) == (400, {"error": "slow_down"})
        pending = self._poll(oauth_server, device_client, started["device_code"])
        assert pending.json()["error"] == "authorization_pending"
        assert [entry["fault"] for entry in oauth_server.request_log()] == ["slow_down", None]
