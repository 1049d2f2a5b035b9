"""The bundled token server's interactive grants, driven over HTTP as a browser and a client would:
the authorization code with PKCE (consent page), the device grant (RFC 8628) and revocation
(RFC 7009)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.demo.loopback import LoopbackServer
from app.demo.token_server import (
    DEVICE_CODE_GRANT,
    TokenServerState,
    create_token_server,
    pkce_challenge,
)
from tests.demo.browser import forms_of, press

CLIENT_ID = "tokenfarm-test"
CLIENT_SECRET = "s3cr3t-value-that-must-not-leak"
REDIRECT_URI = "https://tokenfarm.example/connect/callback"
AUTH = (CLIENT_ID, CLIENT_SECRET)


@pytest.fixture(scope="module")
def state_and_server() -> Iterator[tuple[TokenServerState, LoopbackServer]]:
    state = TokenServerState()
    state.add_client(CLIENT_ID, CLIENT_SECRET, redirect_uris=[REDIRECT_URI])
    state.add_client("other", "other-secret", redirect_uris=["https://other.example/cb"])
    with LoopbackServer(create_token_server(state)) as server:
        yield state, server


@pytest.fixture
def state(state_and_server: tuple[TokenServerState, LoopbackServer]) -> TokenServerState:
    state = state_and_server[0]
    state.require_pkce = True
    state.device_interval = 1
    state.device_expires_in = 600
    state.code_lifetime_seconds = 60
    state.revocation_fault = None
    state.reset_counters()
    return state


@pytest.fixture
def http(state_and_server: tuple[TokenServerState, LoopbackServer]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=state_and_server[1].url, timeout=10.0) as client:
        yield client


def authorize(http: httpx.Client, verifier: str | None = None, **params: str) -> httpx.Response:
    query = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": "read write",
        "state": "st-" + secrets.token_urlsafe(8),
    }
    if verifier is not None:
        query |= {"code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"}
    return http.get("/oauth/authorize", params={**query, **params})


def redirected(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def consent(http: httpx.Client, verifier: str, button: str = "Allow") -> dict[str, str]:
    return redirected(press(http, authorize(http, verifier), button))


def exchange(http: httpx.Client, code: str, verifier: str | None, **extra: str) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    if verifier is not None:
        data["code_verifier"] = verifier
    return http.post("/oauth/token", data={**data, **extra}, auth=AUTH)


def active(http: httpx.Client, token: str) -> bool:
    return bool(http.post("/oauth/introspect", data={"token": token}).json()["active"])


class TestAuthorizationCode:
    def test_allow_gives_a_code_that_pkce_turns_into_tokens(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        verifier = secrets.token_urlsafe(48)
        page = authorize(http, verifier, state="xyz")
        assert page.status_code == 200
        assert page.headers["x-frame-options"] == "DENY"
        assert "tokenfarm-test" in page.text and "write" in page.text
        answer = redirected(press(http, page, "Allow"))
        assert answer["state"] == "xyz"
        tokens = exchange(http, answer["code"], verifier)
        assert tokens.status_code == 200, tokens.text
        body = tokens.json()
        assert body["scope"] == "read write"
        assert active(http, body["access_token"]) and active(http, body["refresh_token"])
        # The refresh token rotates like any other.
        rotated = http.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
            auth=AUTH,
        )
        assert rotated.status_code == 200
        assert not active(http, body["refresh_token"])

    def test_deny_redirects_with_access_denied_and_no_code(self, http: httpx.Client) -> None:
        answer = consent(http, secrets.token_urlsafe(48), "Deny")
        assert answer["error"] == "access_denied"
        assert "code" not in answer

    def test_wrong_verifier_is_invalid_grant(self, http: httpx.Client) -> None:
        verifier = secrets.token_urlsafe(48)
        code = consent(http, verifier)["code"]
        refused = exchange(http, code, secrets.token_urlsafe(48))
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_grant"
        assert code not in refused.text

    def test_missing_verifier_is_invalid_grant(self, http: httpx.Client) -> None:
        code = consent(http, secrets.token_urlsafe(48))["code"]
        assert exchange(http, code, None).json()["error"] == "invalid_grant"

    def test_a_code_works_once_and_its_replay_revokes_what_it_gave(
        self, http: httpx.Client
    ) -> None:
        verifier = secrets.token_urlsafe(48)
        code = consent(http, verifier)["code"]
        body = exchange(http, code, verifier).json()
        replay = exchange(http, code, verifier)
        assert replay.json()["error"] == "invalid_grant"
        assert not active(http, body["access_token"])
        assert not active(http, body["refresh_token"])

    def test_expired_code_is_invalid_grant(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        state.code_lifetime_seconds = 0
        verifier = secrets.token_urlsafe(48)
        code = consent(http, verifier)["code"]
        assert exchange(http, code, verifier).json()["error"] == "invalid_grant"

    def test_code_is_bound_to_its_redirect_uri_and_client(self, http: httpx.Client) -> None:
        verifier = secrets.token_urlsafe(48)
        code = consent(http, verifier)["code"]
        elsewhere = exchange(http, code, verifier, redirect_uri="https://evil.example/cb")
        assert elsewhere.json()["error"] == "invalid_grant"
        code = consent(http, verifier)["code"]
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
        stolen = http.post(
            "/oauth/token", data={**data, "code_verifier": verifier}, auth=("other", "other-secret")
        )
        assert stolen.json()["error"] == "invalid_grant"

    def test_pkce_is_required(self, http: httpx.Client) -> None:
        answer = redirected(authorize(http))
        assert answer["error"] == "invalid_request"
        assert "code_challenge" in answer["error_description"]

    def test_plain_pkce_is_refused(self, http: httpx.Client) -> None:
        answer = redirected(authorize(http, code_challenge="abc", code_challenge_method="plain"))
        assert answer["error"] == "invalid_request"

    def test_unregistered_redirect_uri_gets_a_page_not_a_redirect(self, http: httpx.Client) -> None:
        page = authorize(http, secrets.token_urlsafe(48), redirect_uri="https://evil.example/cb")
        assert page.status_code == 400
        assert "location" not in page.headers
        assert "redirect_uri" in page.text

    def test_unknown_client_gets_a_page(self, http: httpx.Client) -> None:
        page = authorize(http, secrets.token_urlsafe(48), client_id="<script>x</script>")
        assert page.status_code == 400
        assert "<script>" not in page.text

    def test_consent_page_escapes_the_scope(self, http: httpx.Client) -> None:
        page = authorize(http, secrets.token_urlsafe(48), scope="<img src=x onerror=alert(1)>")
        assert page.status_code == 200
        assert "<img" not in page.text
        assert "&lt;img" in page.text

    def test_a_decision_is_taken_once(self, http: httpx.Client) -> None:
        page = authorize(http, secrets.token_urlsafe(48))
        press(http, page, "Allow")
        again = press(http, page, "Allow")
        assert again.status_code == 400
        assert "location" not in again.headers


def start_device(http: httpx.Client, **extra: str) -> dict[str, Any]:
    response = http.post("/oauth/device_authorization", data={"scope": "read", **extra}, auth=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def poll(http: httpx.Client, device_code: str) -> httpx.Response:
    data = {"grant_type": DEVICE_CODE_GRANT, "device_code": device_code}
    return http.post("/oauth/token", data=data, auth=AUTH)


def decide_device(http: httpx.Client, started: dict[str, Any], button: str) -> httpx.Response:
    page = http.get(started["verification_uri"])
    assert page.status_code == 200
    confirm = press(http, page, "Continue", user_code=started["user_code"])
    assert confirm.status_code == 200, confirm.text
    return press(http, confirm, button)


class TestDeviceGrant:
    def test_device_authorization_answers_what_rfc_8628_says(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        started = start_device(http)
        assert set(started) == {
            "device_code",
            "user_code",
            "verification_uri",
            "verification_uri_complete",
            "expires_in",
            "interval",
        }
        assert started["interval"] == 1
        assert started["verification_uri"].endswith("/device")
        assert started["user_code"] in started["verification_uri_complete"]

    def test_pending_then_allowed_then_used(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        started = start_device(http)
        assert poll(http, started["device_code"]).json()["error"] == "authorization_pending"
        done = decide_device(http, started, "Allow")
        assert "return to your device" in done.text
        state.device_interval = 0
        # The grant keeps the interval it was started with: wait it out.
        time.sleep(1)
        tokens = poll(http, started["device_code"])
        assert tokens.status_code == 200, tokens.text
        assert active(http, tokens.json()["refresh_token"])
        time.sleep(1)
        assert poll(http, started["device_code"]).json()["error"] == "invalid_grant"

    def test_denied(self, http: httpx.Client) -> None:
        started = start_device(http)
        decide_device(http, started, "Deny")
        assert poll(http, started["device_code"]).json()["error"] == "access_denied"

    def test_expired(self, state: TokenServerState, http: httpx.Client) -> None:
        state.device_expires_in = 0
        started = start_device(http)
        assert poll(http, started["device_code"]).json()["error"] == "expired_token"

    def test_polling_too_fast_is_slow_down_and_the_interval_grows(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        started = start_device(http)
        poll(http, started["device_code"])
        too_fast = poll(http, started["device_code"])
        assert too_fast.json()["error"] == "slow_down"
        assert "6 seconds" in too_fast.json()["error_description"]

    def test_forced_slow_down(self, state: TokenServerState, http: httpx.Client) -> None:
        started = start_device(http)
        state.force_slow_down()
        assert poll(http, started["device_code"]).json()["error"] == "slow_down"

    def test_verification_page_complete_link_asks_directly(self, http: httpx.Client) -> None:
        started = start_device(http)
        page = http.get(started["verification_uri_complete"])
        assert {"Allow", "Deny"} <= set(forms_of(page.text)[0].buttons)

    def test_unknown_user_code_is_a_400_page(self, http: httpx.Client) -> None:
        page = http.get("/device", params={"user_code": "BBBB-BBBB"})
        assert page.status_code == 400
        assert "unknown" in page.text

    def test_polls_are_recorded_with_their_time(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        started = start_device(http)
        poll(http, started["device_code"])
        (entry,) = state.requests
        assert entry["grant_type"] == DEVICE_CODE_GRANT
        assert isinstance(entry["at"], float)


class TestRevocation:
    def grant(self, http: httpx.Client) -> dict[str, Any]:
        verifier = secrets.token_urlsafe(48)
        body: dict[str, Any] = exchange(http, consent(http, verifier)["code"], verifier).json()
        return body

    def test_revoking_the_refresh_token_revokes_its_family(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        body = self.grant(http)
        data = {"token": body["refresh_token"], "token_type_hint": "refresh_token"}
        response = http.post("/oauth/revoke", data=data, auth=AUTH)
        assert response.status_code == 200
        assert not active(http, body["refresh_token"])
        assert not active(http, body["access_token"])
        assert state.revocations == [
            {"client_id": CLIENT_ID, "token_type_hint": "refresh_token", "kind": "refresh_token"}
        ]
        assert body["refresh_token"] not in repr(state.revocations)

    def test_unknown_token_is_fine(self, http: httpx.Client) -> None:
        assert http.post("/oauth/revoke", data={"token": "nope"}, auth=AUTH).status_code == 200

    def test_client_must_authenticate(self, http: httpx.Client) -> None:
        body = self.grant(http)
        response = http.post("/oauth/revoke", data={"token": body["refresh_token"]})
        assert response.status_code == 401
        assert active(http, body["refresh_token"])

    def test_another_clients_token_is_not_revoked(self, http: httpx.Client) -> None:
        body = self.grant(http)
        response = http.post(
            "/oauth/revoke", data={"token": body["refresh_token"]}, auth=("other", "other-secret")
        )
        assert response.status_code == 400
        assert active(http, body["refresh_token"])

    def test_revocation_fault(self, state: TokenServerState, http: httpx.Client) -> None:
        body = self.grant(http)
        state.revocation_fault = "http_503"
        response = http.post("/oauth/revoke", data={"token": body["refresh_token"]}, auth=AUTH)
        assert response.status_code == 503
        assert active(http, body["refresh_token"])


def test_metadata_names_every_endpoint(http: httpx.Client) -> None:
    metadata = http.get("/.well-known/oauth-authorization-server").json()
    base = str(http.base_url).rstrip("/")
    assert metadata["issuer"] == base
    assert metadata["device_authorization_endpoint"] == f"{base}/oauth/device_authorization"
    assert metadata["revocation_endpoint"] == f"{base}/oauth/revoke"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert http.get(metadata["authorization_endpoint"]).status_code == 400  # a page, no client
