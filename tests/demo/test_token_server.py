"""Real-server tests for the demo RFC 6749 token server and the loopback uvicorn runner."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest
from jose import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.demo.loopback import LoopbackServer
from app.demo.token_server import TokenServerState, create_token_server
from tests.signing_keys import KeyPair, ec_key, rsa_key

CLIENT_ID = "tokenfarm-test"
CLIENT_SECRET = "s3cr3t-value-that-must-not-leak"
TOKEN = "/oauth/token"
INTROSPECT = "/oauth/introspect"


@pytest.fixture
def state() -> TokenServerState:
    state = TokenServerState()
    state.add_client(CLIENT_ID, CLIENT_SECRET)
    return state


class SwappableApp:
    """ASGI app forwarding to the token server of the current test.

    One uvicorn per module keeps the suite fast (each shutdown costs ~0.2s) while every test
    still gets a fresh TokenServerState.
    """

    def __init__(self) -> None:
        self.target: ASGIApp = create_token_server(TokenServerState())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.target(scope, receive, send)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[tuple[LoopbackServer, SwappableApp]]:
    app = SwappableApp()
    with LoopbackServer(app) as server:
        yield server, app


@pytest.fixture
def server(
    state: TokenServerState, shared_server: tuple[LoopbackServer, SwappableApp]
) -> LoopbackServer:
    server, app = shared_server
    app.target = create_token_server(state)
    return server


@pytest.fixture
def http(server: LoopbackServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        yield client


def refresh(
    http: httpx.Client,
    refresh_token: str,
    *,
    auth: tuple[str, str] | None = (CLIENT_ID, CLIENT_SECRET),
    **extra: str,
) -> httpx.Response:
    """POST a refresh_token grant using client_secret_basic."""
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra}
    return http.post(TOKEN, data=data, auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT)


def introspect(http: httpx.Client, token: str) -> dict[str, Any]:
    response = http.post(INTROSPECT, data={"token": token})
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def basic_header(client_id: str, client_secret: str) -> str:
    """Build an RFC 6749 §2.3.1 Basic header (form-urlencode, then base64)."""
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert isinstance(body["error_description"], str)
    assert body["error_description"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


class TestLoopbackServer:
    @staticmethod
    def hello_app() -> Starlette:
        async def hello(request: Request) -> Response:
            return PlainTextResponse("hello")

        return Starlette(routes=[Route("/", hello)])

    def test_serves_on_an_ephemeral_loopback_port(self) -> None:
        with LoopbackServer(self.hello_app()) as server:
            assert server.port > 0
            assert server.url == f"http://127.0.0.1:{server.port}"
            assert httpx.get(server.url).text == "hello"

    def test_binds_the_requested_port(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with LoopbackServer(self.hello_app(), port=port) as server:
            assert server.port == port
            assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200

    def test_stops_serving_after_exit(self) -> None:
        with LoopbackServer(self.hello_app()) as server:
            url = server.url
        with pytest.raises(httpx.ConnectError):
            httpx.get(url)

    def test_url_is_unavailable_outside_the_context(self) -> None:
        server = LoopbackServer(self.hello_app())
        with pytest.raises(RuntimeError):
            _ = server.url

    def test_runs_lifespan_startup_and_shutdown(self) -> None:
        events: list[str] = []

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            events.append("startup")
            yield
            events.append("shutdown")

        with LoopbackServer(Starlette(lifespan=lifespan)):
            assert events == ["startup"]
        assert events == ["startup", "shutdown"]

    def test_failed_startup_raises_runtime_error(self) -> None:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            raise ValueError("database unavailable")
            yield  # pragma: no cover

        with pytest.raises(RuntimeError, match="did not start"):
            with LoopbackServer(Starlette(lifespan=lifespan)):
                pass  # pragma: no cover

    def test_exit_does_not_wait_for_a_hanging_request(self) -> None:
        entered = threading.Event()

        async def stuck(request: Request) -> Response:
            entered.set()
            await asyncio.sleep(30)
            return PlainTextResponse("late")  # pragma: no cover

        outcome: list[BaseException | httpx.Response] = []

        def call(url: str) -> None:
            try:
                outcome.append(httpx.get(url, timeout=10.0))
            except httpx.HTTPError as exc:
                outcome.append(exc)

        app = Starlette(routes=[Route("/", stuck)])
        with LoopbackServer(app, graceful_shutdown_seconds=1) as server:
            caller = threading.Thread(target=call, args=(server.url,))
            caller.start()
            assert entered.wait(5.0)
            started_exit = time.monotonic()
        assert time.monotonic() - started_exit < 4.0
        caller.join(5.0)
        assert not caller.is_alive()
        assert len(outcome) == 1
        assert not isinstance(outcome[0], httpx.Response) or outcome[0].status_code >= 500


class TestRefreshTokenRotation:
    def test_rotates_five_times_in_a_row(self, state: TokenServerState, http: httpx.Client) -> None:
        current = state.issue_refresh_token(CLIENT_ID)
        seen = {current}
        for _ in range(5):
            response = refresh(http, current)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["refresh_token"].startswith("rt_")
            assert body["refresh_token"] not in seen
            assert introspect(http, body["access_token"])["active"] is True
            assert introspect(http, current) == {"active": False}
            current = body["refresh_token"]
            seen.add(current)
        assert introspect(http, current)["active"] is True

    def test_answer_has_the_rfc6749_shape_and_no_store_headers(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        response = refresh(http, state.issue_refresh_token(CLIENT_ID, scope="read write"))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"
        body = response.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
        assert body["access_token"].startswith("at_")
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 3600
        assert body["scope"] == "read write"

    def test_expires_in_follows_the_state(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        state.expires_in = 120
        response = refresh(http, state.issue_refresh_token(CLIENT_ID))
        assert response.json()["expires_in"] == 120

    def test_reusing_a_spent_token_is_invalid_grant_and_revokes_the_newest_token(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        first = state.issue_refresh_token(CLIENT_ID)
        second = refresh(http, first).json()["refresh_token"]
        third_body = refresh(http, second).json()
        newest = third_body["refresh_token"]

        assert_oauth_error(refresh(http, first), 400, "invalid_grant")

        assert introspect(http, newest) == {"active": False}
        assert_oauth_error(refresh(http, newest), 400, "invalid_grant")
        # The family's access tokens go too: whoever replayed the token may hold them.
        assert introspect(http, third_body["access_token"]) == {"active": False}

    def test_reuse_revocation_can_spare_access_tokens(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        state.revoke_access_tokens_on_reuse = False
        first = state.issue_refresh_token(CLIENT_ID)
        access_token = refresh(http, first).json()["access_token"]
        assert_oauth_error(refresh(http, first), 400, "invalid_grant")
        assert introspect(http, access_token)["active"] is True

    def test_reuse_only_revokes_its_own_family(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        family_a = state.issue_refresh_token(CLIENT_ID)
        family_b = state.issue_refresh_token(CLIENT_ID)
        refresh(http, family_a)
        assert_oauth_error(refresh(http, family_a), 400, "invalid_grant")
        assert refresh(http, family_b).status_code == 200

    def test_unknown_refresh_token_is_invalid_grant(self, http: httpx.Client) -> None:
        assert_oauth_error(refresh(http, "rt_does-not-exist"), 400, "invalid_grant")

    def test_missing_refresh_token_is_invalid_request(self, http: httpx.Client) -> None:
        response = http.post(
            TOKEN, data={"grant_type": "refresh_token"}, auth=(CLIENT_ID, CLIENT_SECRET)
        )
        assert_oauth_error(response, 400, "invalid_request")

    def test_token_of_another_client_is_invalid_grant(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        state.add_client("other", "other-secret")
        token = state.issue_refresh_token("other")
        assert_oauth_error(refresh(http, token), 400, "invalid_grant")
        assert introspect(http, token)["active"] is True

    def test_narrower_scope_is_granted_and_the_family_keeps_its_scope(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        token = state.issue_refresh_token(CLIENT_ID, scope="read write")
        narrowed = refresh(http, token, scope="read").json()
        assert narrowed["scope"] == "read"
        assert introspect(http, narrowed["access_token"])["scope"] == "read"
        assert refresh(http, narrowed["refresh_token"]).json()["scope"] == "read write"

    def test_wider_scope_is_invalid_scope_and_does_not_consume_the_token(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        token = state.issue_refresh_token(CLIENT_ID, scope="read")
        assert_oauth_error(refresh(http, token, scope="read admin"), 400, "invalid_scope")
        assert refresh(http, token).status_code == 200

    def test_issuing_for_an_unregistered_client_fails_fast(self, state: TokenServerState) -> None:
        with pytest.raises(ValueError, match="unknown client_id"):
            state.issue_refresh_token("nobody")


class TestClientCredentials:
    def test_issues_an_access_token_without_a_refresh_token(self, http: httpx.Client) -> None:
        response = http.post(
            TOKEN, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET)
        )
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
        assert body["access_token"].startswith("at_")
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 3600
        assert body["scope"] == "read"
        assert introspect(http, body["access_token"])["client_id"] == CLIENT_ID

    def test_requested_scope_is_granted(self, http: httpx.Client) -> None:
        response = http.post(
            TOKEN,
            data={"grant_type": "client_credentials", "scope": "reports:read"},
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        assert response.json()["scope"] == "reports:read"

    def test_audience_and_resource_are_accepted_and_recorded(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        response = http.post(
            TOKEN,
            content=(
                "grant_type=client_credentials&audience=https%3A%2F%2Fapi.example"
                "&resource=https%3A%2F%2Fa.example&resource=https%3A%2F%2Fb.example"
            ),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        assert response.status_code == 200, response.text
        assert introspect(http, response.json()["access_token"])["aud"] == "https://api.example"
        (entry,) = state.requests
        assert entry["audience"] == "https://api.example"
        assert entry["resource"] == ["https://a.example", "https://b.example"]


class TestClientAuthentication:
    def test_client_secret_basic_is_accepted(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        response = http.post(
            TOKEN, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET)
        )
        assert response.status_code == 200
        assert state.requests[0]["auth_method"] == "basic"

    def test_basic_credentials_are_form_urlencoded(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        client_id, client_secret = "svc:reports ü", "p@ss:w/rd+%&="
        state.add_client(client_id, client_secret)
        response = http.post(
            TOKEN,
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_header(client_id, client_secret)},
        )
        assert response.status_code == 200, response.text
        assert state.requests[0]["client_id"] == client_id

    def test_client_secret_post_is_accepted(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        response = http.post(
            TOKEN,
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
        )
        assert response.status_code == 200
        assert state.requests[0]["auth_method"] == "post"

    def test_client_secret_post_works_for_refresh(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        token = state.issue_refresh_token(CLIENT_ID)
        response = refresh(http, token, auth=None, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        assert response.status_code == 200

    def test_wrong_basic_secret_is_401_with_a_basic_challenge(self, http: httpx.Client) -> None:
        response = http.post(
            TOKEN, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, "wrong")
        )
        assert_oauth_error(response, 401, "invalid_client")
        assert response.headers["www-authenticate"] == 'Basic realm="token"'

    def test_wrong_post_secret_is_401_without_a_challenge(self, http: httpx.Client) -> None:
        response = http.post(
            TOKEN,
            data={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "x"},
        )
        assert_oauth_error(response, 401, "invalid_client")
        assert "www-authenticate" not in response.headers

    def test_unknown_client_is_invalid_client(self, http: httpx.Client) -> None:
        response = http.post(
            TOKEN, data={"grant_type": "client_credentials"}, auth=("nobody", CLIENT_SECRET)
        )
        assert_oauth_error(response, 401, "invalid_client")

    def test_missing_credentials_are_invalid_client(self, http: httpx.Client) -> None:
        response = http.post(TOKEN, data={"grant_type": "client_credentials"})
        assert_oauth_error(response, 401, "invalid_client")

    def test_client_id_without_secret_is_invalid_client(self, http: httpx.Client) -> None:
        response = http.post(
            TOKEN, data={"grant_type": "client_credentials", "client_id": CLIENT_ID}
        )
        assert_oauth_error(response, 401, "invalid_client")

    def test_basic_and_post_together_are_invalid_request(self, http: httpx.Client) -> None:
        response = http.post(
            TOKEN,
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        assert_oauth_error(response, 400, "invalid_request")

    @pytest.mark.parametrize(
        "authorization",
        ["Basic not-base64!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Bearer abc"],
    )
    def test_malformed_authorization_is_invalid_client_with_a_challenge(
        self, http: httpx.Client, authorization: str
    ) -> None:
        response = http.post(
            TOKEN,
            data={"grant_type": "client_credentials"},
            headers={"Authorization": authorization},
        )
        assert_oauth_error(response, 401, "invalid_client")
        assert response.headers["www-authenticate"] == 'Basic realm="token"'

    def test_listed_unauthorized_client_is_unauthorized_client(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        state.unauthorized_clients.add(CLIENT_ID)
        response = http.post(
            TOKEN, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET)
        )
        assert_oauth_error(response, 400, "unauthorized_client")


class TestRequestValidation:
    def test_missing_grant_type_is_invalid_request(self, http: httpx.Client) -> None:
        response = http.post(TOKEN, data={"scope": "read"}, auth=(CLIENT_ID, CLIENT_SECRET))
        assert_oauth_error(response, 400, "invalid_request")

    def test_unknown_grant_type_is_unsupported_grant_type(self, http: httpx.Client) -> None:
        response = http.post(
            TOKEN, data={"grant_type": "password"}, auth=(CLIENT_ID, CLIENT_SECRET)
        )
        assert_oauth_error(response, 400, "unsupported_grant_type")

    def test_json_body_is_invalid_request(self, http: httpx.Client) -> None:
        response = http.post(
            TOKEN, json={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET)
        )
        assert_oauth_error(response, 400, "invalid_request")

    def test_repeated_parameter_is_invalid_request(self, http: httpx.Client) -> None:
        response = http.post(
            TOKEN,
            content="grant_type=client_credentials&scope=read&scope=write",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        assert_oauth_error(response, 400, "invalid_request")

    def test_empty_parameter_counts_as_missing(self, http: httpx.Client) -> None:
        response = http.post(TOKEN, data={"grant_type": ""}, auth=(CLIENT_ID, CLIENT_SECRET))
        assert_oauth_error(response, 400, "invalid_request")

    def test_non_post_is_405_with_an_oauth_body(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        response = http.get(TOKEN)
        assert_oauth_error(response, 405, "invalid_request")
        assert response.headers["allow"] == "POST"
        assert state.token_requests == 0


class TestFaults:
    @pytest.fixture
    def token(self, state: TokenServerState) -> str:
        return state.issue_refresh_token(CLIENT_ID)

    def assert_not_rotated(self, state: TokenServerState, http: httpx.Client, token: str) -> None:
        state.fault = None
        assert state.is_active(token)
        assert refresh(http, token).status_code == 200

    def test_http_500_is_a_json_server_error(
        self, state: TokenServerState, http: httpx.Client, token: str
    ) -> None:
        state.fault = "http_500"
        response = refresh(http, token)
        assert response.status_code == 500
        assert response.json() == {"error": "server_error"}
        self.assert_not_rotated(state, http, token)

    def test_html_is_a_200_html_page(
        self, state: TokenServerState, http: httpx.Client, token: str
    ) -> None:
        state.fault = "html"
        response = refresh(http, token)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert response.text.startswith("<html>")
        assert response.text.endswith("</html>")
        self.assert_not_rotated(state, http, token)

    def test_broken_json_is_truncated_json(
        self, state: TokenServerState, http: httpx.Client, token: str
    ) -> None:
        state.fault = "broken_json"
        response = refresh(http, token)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.text)
        self.assert_not_rotated(state, http, token)

    def test_no_access_token_omits_only_the_token(
        self, state: TokenServerState, http: httpx.Client, token: str
    ) -> None:
        state.fault = "no_access_token"
        response = refresh(http, token)
        assert response.status_code == 200
        body = response.json()
        assert "access_token" not in body
        assert body["token_type"] == "Bearer"
        assert isinstance(body["expires_in"], int)
        self.assert_not_rotated(state, http, token)

    def test_invalid_client_rejects_correct_credentials(
        self, state: TokenServerState, http: httpx.Client, token: str
    ) -> None:
        state.fault = "invalid_client"
        response = refresh(http, token)
        assert_oauth_error(response, 401, "invalid_client")
        assert response.headers["www-authenticate"] == 'Basic realm="token"'
        self.assert_not_rotated(state, http, token)

    @pytest.mark.parametrize(
        "fault", ["http_500", "html", "broken_json", "no_access_token", "invalid_client"]
    )
    def test_fault_is_counted_and_recorded(
        self, state: TokenServerState, http: httpx.Client, token: str, fault: str
    ) -> None:
        state.fault = fault
        refresh(http, token)
        assert state.token_requests == 1
        (entry,) = state.requests
        assert entry["fault"] == fault
        assert entry["grant_type"] == "refresh_token"

    def test_hang_waits_hang_seconds_then_rotates_normally(
        self, state: TokenServerState, http: httpx.Client, token: str
    ) -> None:
        state.fault = "hang"
        state.hang_seconds = 0.3
        started = time.monotonic()
        response = refresh(http, token)
        assert time.monotonic() - started >= 0.3
        assert response.status_code == 200
        assert response.json()["refresh_token"].startswith("rt_")
        assert not state.is_active(token)

    def test_client_that_gives_up_during_a_hang_still_loses_its_token(
        self, state: TokenServerState, server: LoopbackServer, token: str
    ) -> None:
        state.fault = "hang"
        state.hang_seconds = 0.3
        with httpx.Client(base_url=server.url, timeout=0.05) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                refresh(impatient, token)
        deadline = time.monotonic() + 3.0
        while state.is_active(token) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not state.is_active(token)

    def test_latency_delays_every_token_request(
        self, state: TokenServerState, http: httpx.Client, token: str
    ) -> None:
        state.latency_seconds = 0.2
        started = time.monotonic()
        assert refresh(http, token).status_code == 200
        assert http.post(TOKEN, data={}).status_code == 400
        assert time.monotonic() - started >= 0.4

    def test_unknown_fault_name_is_rejected(self, state: TokenServerState) -> None:
        with pytest.raises(ValueError, match="unknown fault"):
            state.fault = "http_418"


class TestIntrospection:
    def test_fresh_access_token_is_active(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        body = refresh(http, state.issue_refresh_token(CLIENT_ID, scope="read write")).json()
        answer = introspect(http, body["access_token"])
        assert answer["active"] is True
        assert answer["scope"] == "read write"
        assert answer["client_id"] == CLIENT_ID
        assert answer["token_type"] == "Bearer"
        assert answer["exp"] - answer["iat"] == 3600

    def test_expired_access_token_is_inactive(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        state.expires_in = 0
        body = refresh(http, state.issue_refresh_token(CLIENT_ID)).json()
        assert introspect(http, body["access_token"]) == {"active": False}

    def test_unknown_token_is_inactive(self, http: httpx.Client) -> None:
        assert introspect(http, "at_unknown") == {"active": False}

    def test_refresh_token_is_active_until_used(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        token = state.issue_refresh_token(CLIENT_ID)
        assert introspect(http, token)["active"] is True
        refresh(http, token)
        assert introspect(http, token) == {"active": False}

    def test_missing_token_is_invalid_request(self, http: httpx.Client) -> None:
        assert_oauth_error(http.post(INTROSPECT, data={}), 400, "invalid_request")

    def test_introspection_is_not_counted_as_a_token_request(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        introspect(http, "at_unknown")
        assert state.token_requests == 0


class TestObservability:
    def test_token_requests_counts_every_post_including_errors(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        token = state.issue_refresh_token(CLIENT_ID)
        refresh(http, token)
        refresh(http, token)
        http.post(TOKEN, json={"not": "a form"})
        assert state.token_requests == 3
        assert [entry["status"] for entry in state.requests] == [200, 400, 400]
        assert [entry["error"] for entry in state.requests] == [
            None,
            "invalid_grant",
            "invalid_request",
        ]

    def test_reset_counters_clears_counts_but_keeps_tokens(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        token = state.issue_refresh_token(CLIENT_ID)
        access_token = refresh(http, token).json()["access_token"]
        state.reset_counters()
        assert state.token_requests == 0
        assert state.requests == []
        assert state.is_active(access_token)

    def test_requests_record_field_names_but_never_secret_values(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        token = state.issue_refresh_token(CLIENT_ID)
        refresh(http, token, auth=None, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        http.post(
            TOKEN,
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_header(CLIENT_ID, CLIENT_SECRET)},
        )
        post_entry, basic_entry = state.requests
        assert post_entry["grant_type"] == "refresh_token"
        assert post_entry["client_id"] == CLIENT_ID
        assert post_entry["auth_method"] == "post"
        assert post_entry["fields"] == [
            "grant_type",
            "refresh_token",
            "client_id",
            "client_secret",
        ]
        assert basic_entry["auth_method"] == "basic"
        assert basic_entry["fields"] == ["grant_type"]
        recorded = repr(state.requests)
        assert CLIENT_SECRET not in recorded
        assert token not in recorded

    def test_state_is_safe_to_read_while_requests_run(
        self, state: TokenServerState, server: LoopbackServer
    ) -> None:
        errors: list[BaseException] = []

        def hammer() -> None:
            try:
                with httpx.Client(base_url=server.url, timeout=5.0) as client:
                    for _ in range(10):
                        client.post(
                            TOKEN,
                            data={"grant_type": "client_credentials"},
                            auth=(CLIENT_ID, CLIENT_SECRET),
                        )
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        workers = [threading.Thread(target=hammer) for _ in range(4)]
        for worker in workers:
            worker.start()
        while any(worker.is_alive() for worker in workers):
            assert len(state.requests) <= state.token_requests
            time.sleep(0.005)
        for worker in workers:
            worker.join()
        assert errors == []
        assert state.token_requests == 40


# --- RFC 7523: the JWT-bearer grant, private_key_jwt, and the Entra ID path -------------------

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ISSUER = "robot@tokenfarm-test.iam.gserviceaccount.com"
KEY_CLIENT = "key-client"


def signed(
    key: KeyPair | str, claims: dict[str, Any], algorithm: str = "RS256", **header: Any
) -> str:
    """A JWT signed with a test key (a KeyPair's private key, or an HMAC secret)."""
    secret = key.private_pem if isinstance(key, KeyPair) else key
    return str(jwt.encode(claims, secret, algorithm=algorithm, headers=header or None))


@dataclass(frozen=True)
class FromNow:
    """A time claim this many seconds from when the assertion is made. Parameters are built when
    the tests are collected, which can be minutes before a test runs."""

    seconds: int


def _resolved(overrides: dict[str, Any], now: int) -> dict[str, Any]:
    return {k: now + v.seconds if isinstance(v, FromNow) else v for k, v in overrides.items()}


def grant_claims(token_url: str, **overrides: Any) -> dict[str, Any]:
    """What a Google-style assertion says: iss, scope, aud, iat, exp."""
    now = int(time.time())
    claims = {"iss": ISSUER, "scope": "read", "aud": token_url, "iat": now, "exp": now + 300}
    claims.update(_resolved(overrides, now))
    return {name: value for name, value in claims.items() if value is not None}


def client_claims(token_url: str, **overrides: Any) -> dict[str, Any]:
    """What a private_key_jwt client assertion says (RFC 7523 §3)."""
    now = int(time.time())
    claims = {
        "iss": KEY_CLIENT,
        "sub": KEY_CLIENT,
        "aud": token_url,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    claims.update(_resolved(overrides, now))
    return {name: value for name, value in claims.items() if value is not None}


class TestJwtBearerGrant:
    @pytest.fixture
    def token_url(self, state: TokenServerState, server: LoopbackServer) -> str:
        state.add_jwt_issuer(ISSUER, rsa_key("sa").public_pem, key_id="kid-1")
        return f"{server.url}{TOKEN}"

    def grant(self, http: httpx.Client, assertion: str, **extra: str) -> httpx.Response:
        return http.post(TOKEN, data={"grant_type": JWT_BEARER, "assertion": assertion, **extra})

    def test_a_signed_assertion_gets_an_access_token(
        self, state: TokenServerState, http: httpx.Client, token_url: str
    ) -> None:
        assertion = signed(rsa_key("sa"), grant_claims(token_url), kid="kid-1")
        response = self.grant(http, assertion)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
        assert body["scope"] == "read"
        answer = introspect(http, body["access_token"])
        assert answer["active"] is True
        assert answer["client_id"] == ISSUER
        assert "sub" not in answer
        (entry,) = state.requests
        assert entry["grant_type"] == JWT_BEARER
        assert entry["auth_method"] is None
        assert entry["assertion"]["header"] == {"alg": "RS256", "kid": "kid-1", "typ": "JWT"}
        assert entry["assertion"]["claims"]["iss"] == ISSUER
        assert entry["assertion"]["claims"]["aud"] == token_url
        assert assertion not in repr(state.requests)

    def test_sub_acts_for_a_user(self, http: httpx.Client, token_url: str) -> None:
        claims = grant_claims(token_url, sub="alice@example.com")
        response = self.grant(http, signed(rsa_key("sa"), claims, kid="kid-1"))
        assert response.status_code == 200, response.text
        assert introspect(http, response.json()["access_token"])["sub"] == "alice@example.com"

    def test_scope_may_come_in_the_request(self, http: httpx.Client, token_url: str) -> None:
        claims = grant_claims(token_url, scope=None)
        response = self.grant(http, signed(rsa_key("sa"), claims, kid="kid-1"), scope="write")
        assert response.status_code == 200, response.text
        assert response.json()["scope"] == "write"

    def test_an_audience_list_naming_the_endpoint_is_accepted(
        self, http: httpx.Client, token_url: str
    ) -> None:
        claims = grant_claims(token_url, aud=["https://other.example", token_url])
        assert self.grant(http, signed(rsa_key("sa"), claims, kid="kid-1")).status_code == 200

    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            ({"aud": "https://elsewhere.example/token"}, "aud"),
            ({"exp": FromNow(-600), "iat": FromNow(-900)}, "expired"),
            ({"exp": None}, "no exp"),
            ({"iat": None}, "no iat"),
            ({"iat": FromNow(600), "exp": FromNow(900)}, "future"),
            ({"exp": FromNow(7200)}, "at most 3600"),
            ({"iss": "stranger@example.com"}, "no registered key"),
        ],
    )
    def test_bad_claims_are_invalid_grant(
        self,
        state: TokenServerState,
        http: httpx.Client,
        token_url: str,
        change: dict[str, Any],
        reason: str,
    ) -> None:
        claims = grant_claims(token_url, **change)
        response = self.grant(http, signed(rsa_key("sa"), claims, kid="kid-1"))
        assert_oauth_error(response, 400, "invalid_grant")
        assert reason in response.json()["error_description"]
        assert "assertion" not in state.requests[0]

    def test_a_signature_by_another_key_is_invalid_grant(
        self, http: httpx.Client, token_url: str
    ) -> None:
        response = self.grant(
            http, signed(rsa_key("intruder"), grant_claims(token_url), kid="kid-1")
        )
        assert_oauth_error(response, 400, "invalid_grant")
        assert "signature" in response.json()["error_description"]

    def test_another_algorithm_is_invalid_grant(self, http: httpx.Client, token_url: str) -> None:
        # alg confusion: an HMAC over the public key must never pass for RS256.
        forged = signed("x" * 40, grant_claims(token_url), algorithm="HS256", kid="kid-1")
        assert_oauth_error(self.grant(http, forged), 400, "invalid_grant")

    def test_a_wrong_kid_is_invalid_grant(self, http: httpx.Client, token_url: str) -> None:
        response = self.grant(http, signed(rsa_key("sa"), grant_claims(token_url), kid="old"))
        assert_oauth_error(response, 400, "invalid_grant")

    def test_a_replayed_jti_is_invalid_grant(self, http: httpx.Client, token_url: str) -> None:
        assertion = signed(rsa_key("sa"), grant_claims(token_url, jti="once"), kid="kid-1")
        assert self.grant(http, assertion).status_code == 200
        assert_oauth_error(self.grant(http, assertion), 400, "invalid_grant")

    def test_no_scope_at_all_is_invalid_scope(self, http: httpx.Client, token_url: str) -> None:
        claims = grant_claims(token_url, scope=None)
        assert_oauth_error(
            self.grant(http, signed(rsa_key("sa"), claims, kid="kid-1")), 400, "invalid_scope"
        )

    def test_a_scope_beyond_the_registered_ones_is_invalid_scope(
        self, state: TokenServerState, http: httpx.Client, token_url: str
    ) -> None:
        state.add_jwt_issuer(ISSUER, rsa_key("sa").public_pem, scopes=["read"])
        claims = grant_claims(token_url, scope="read admin")
        assert_oauth_error(self.grant(http, signed(rsa_key("sa"), claims)), 400, "invalid_scope")

    def test_missing_assertion_is_invalid_request(self, http: httpx.Client) -> None:
        response = http.post(TOKEN, data={"grant_type": JWT_BEARER})
        assert_oauth_error(response, 400, "invalid_request")

    def test_garbage_is_invalid_grant(self, http: httpx.Client, token_url: str) -> None:
        assert_oauth_error(self.grant(http, "not.a.jwt"), 400, "invalid_grant")


class TestPrivateKeyJwt:
    @pytest.fixture
    def token_url(self, state: TokenServerState, server: LoopbackServer) -> str:
        state.add_client_key(KEY_CLIENT, rsa_key("client").public_pem)
        return f"{server.url}{TOKEN}"

    def authenticate(
        self, http: httpx.Client, assertion: str, grant: str = "client_credentials", **extra: str
    ) -> httpx.Response:
        data = {
            "grant_type": grant,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
            **extra,
        }
        return http.post(TOKEN, data=data)

    def test_a_signed_client_assertion_authenticates(
        self, state: TokenServerState, http: httpx.Client, token_url: str
    ) -> None:
        assertion = signed(rsa_key("client"), client_claims(token_url))
        response = self.authenticate(http, assertion, client_id=KEY_CLIENT)
        assert response.status_code == 200, response.text
        assert introspect(http, response.json()["access_token"])["client_id"] == KEY_CLIENT
        (entry,) = state.requests
        assert entry["auth_method"] == "private_key_jwt"
        assert entry["client_id"] == KEY_CLIENT
        assert entry["client_assertion"]["claims"]["iss"] == KEY_CLIENT
        assert entry["client_assertion"]["claims"]["aud"] == token_url
        assert assertion not in repr(state.requests)

    def test_client_id_may_be_left_to_the_assertion(
        self, http: httpx.Client, token_url: str
    ) -> None:
        response = self.authenticate(http, signed(rsa_key("client"), client_claims(token_url)))
        assert response.status_code == 200, response.text

    def test_it_works_for_the_refresh_grant(
        self, state: TokenServerState, http: httpx.Client, token_url: str
    ) -> None:
        refresh_token = state.issue_refresh_token(KEY_CLIENT)
        assertion = signed(rsa_key("client"), client_claims(token_url))
        response = self.authenticate(http, assertion, "refresh_token", refresh_token=refresh_token)
        assert response.status_code == 200, response.text
        assert response.json()["refresh_token"] != refresh_token

    def test_an_es256_client_key(
        self, state: TokenServerState, http: httpx.Client, token_url: str
    ) -> None:
        state.add_client_key(KEY_CLIENT, ec_key("client").public_pem, algorithm="ES256")
        assertion = signed(ec_key("client"), client_claims(token_url), algorithm="ES256")
        assert self.authenticate(http, assertion).status_code == 200

    @pytest.mark.parametrize(
        "change",
        [
            {"aud": "https://elsewhere.example/token"},
            {"exp": FromNow(-600)},
            {"exp": None},
            {"jti": None},
            {"sub": "someone-else"},
            {"iss": "someone-else", "sub": "someone-else"},
        ],
    )
    def test_bad_claims_are_invalid_client(
        self, http: httpx.Client, token_url: str, change: dict[str, Any]
    ) -> None:
        assertion = signed(rsa_key("client"), client_claims(token_url, **change))
        response = self.authenticate(http, assertion, client_id=KEY_CLIENT)
        assert_oauth_error(response, 401, "invalid_client")
        assert "www-authenticate" not in response.headers

    def test_a_signature_by_another_key_is_invalid_client(
        self, http: httpx.Client, token_url: str
    ) -> None:
        assertion = signed(rsa_key("intruder"), client_claims(token_url))
        assert_oauth_error(self.authenticate(http, assertion), 401, "invalid_client")

    def test_a_reused_jti_is_invalid_client(self, http: httpx.Client, token_url: str) -> None:
        assertion = signed(rsa_key("client"), client_claims(token_url))
        assert self.authenticate(http, assertion).status_code == 200
        assert_oauth_error(self.authenticate(http, assertion), 401, "invalid_client")

    def test_a_wrong_assertion_type_is_invalid_client(
        self, http: httpx.Client, token_url: str
    ) -> None:
        assertion = signed(rsa_key("client"), client_claims(token_url))
        response = http.post(
            TOKEN,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:example:saml",
                "client_assertion": assertion,
            },
        )
        assert_oauth_error(response, 401, "invalid_client")

    def test_an_assertion_and_basic_together_are_invalid_request(
        self, http: httpx.Client, token_url: str
    ) -> None:
        assertion = signed(rsa_key("client"), client_claims(token_url))
        data = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        response = http.post(TOKEN, data=data, auth=(CLIENT_ID, CLIENT_SECRET))
        assert_oauth_error(response, 400, "invalid_request")

    def test_a_key_client_has_no_secret_to_guess(self, http: httpx.Client, token_url: str) -> None:
        response = http.post(
            TOKEN, data={"grant_type": "client_credentials"}, auth=(KEY_CLIENT, "")
        )
        assert_oauth_error(response, 401, "invalid_client")


class TestEntraPath:
    TENANT = "8f1c2d3e-0000-4000-8000-123456789abc"

    def path(self, tenant: str | None = None) -> str:
        return f"/{tenant or self.TENANT}/oauth2/v2.0/token"

    def post_credentials(self, **extra: str) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            **extra,
        }

    def test_client_credentials_with_a_default_scope(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        scope = "https://graph.microsoft.com/.default"
        response = http.post(self.path(), data=self.post_credentials(scope=scope))
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        assert response.json()["scope"] == scope
        (entry,) = state.requests
        assert entry["tenant"] == self.TENANT
        assert entry["path"] == self.path()
        assert entry["auth_method"] == "post"

    def test_the_standard_path_has_no_tenant(
        self, state: TokenServerState, http: httpx.Client
    ) -> None:
        http.post(TOKEN, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET))
        assert state.requests[0]["tenant"] is None
        assert state.requests[0]["path"] == TOKEN

    def test_scope_is_required(self, http: httpx.Client) -> None:
        assert_oauth_error(
            http.post(self.path(), data=self.post_credentials()), 400, "invalid_request"
        )

    def test_a_scope_without_default_is_invalid_scope(self, http: httpx.Client) -> None:
        data = self.post_credentials(scope="User.Read")
        assert_oauth_error(http.post(self.path(), data=data), 400, "invalid_scope")

    def test_a_client_assertion_names_the_tenant_endpoint(
        self, state: TokenServerState, http: httpx.Client, server: LoopbackServer
    ) -> None:
        state.add_client_key(KEY_CLIENT, rsa_key("client").public_pem)
        scope = "https://graph.microsoft.com/.default"
        for aud, status in ((f"{server.url}{TOKEN}", 401), (f"{server.url}{self.path()}", 200)):
            data = {
                "grant_type": "client_credentials",
                "scope": scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": signed(rsa_key("client"), client_claims(aud)),
            }
            assert http.post(self.path(), data=data).status_code == status

    def test_faults_apply_here_too(self, state: TokenServerState, http: httpx.Client) -> None:
        state.queue_faults("http_503")
        scope = "https://graph.microsoft.com/.default"
        assert http.post(self.path(), data=self.post_credentials(scope=scope)).status_code == 503
