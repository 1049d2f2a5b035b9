"""A real OAuth 2.0 / OpenID Connect authorization server for the tests: django-oauth-toolkit.

Issue 14 asks that tokenfarm's connect flows be tested against an authorization server from the
package registry, not one we write. This package runs django-oauth-toolkit (DOT 3.x) in its own
process on 127.0.0.1 (`provider.py`) and drives it from the tests through `OAuthServer`:

- DOT as configured: authorization code with PKCE required, refresh-token rotation with reuse
  protection (presenting a used refresh token is refused AND revokes the grant; grace period 0),
  OIDC (discovery at `{issuer}/.well-known/openid-configuration`, RS256 ID tokens, a key made at
  start), device authorization (RFC 8628), revocation (RFC 7009), introspection (RFC 7662);
  scopes `openid email profile read write`; users `alice@example.com` / `bob@example.com`
  (passwords in `USERS`).
- A browser: `consent()` logs in with Django's login form (cookie session), opens the authorize
  URL, posts Allow or Deny and returns the redirect's `Location` without following it;
  `approve_device()` does the same on the device verification pages.
- Control endpoints under `/_control/` (no real client uses them): `create_client()`, the token
  endpoint's request log (grant type and a SHA-256 of the refresh token presented, never the
  token), fault injection (`fail_after_processing`, `slow_down_next`,
  `wrong_issuer_in_discovery`) and `revoke_all_for(user)`.

Tests request the `oauth_server` fixture (tests/oauth_server/fixtures.py, imported by
tests/conftest.py): one server per xdist worker, its log and faults reset before every test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
ALICE = "alice@example.com"
BOB = "bob@example.com"
USERS = {ALICE: "alice-password", BOB: "bob-password"}
STARTUP_TIMEOUT_SECONDS = 30.0


class OAuthServerError(AssertionError):
    """The provider answered something a test did not expect (the message says what)."""


def pkce_pair() -> tuple[str, str]:
    """A fresh (verifier, S256 challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sha256_hex(value: str) -> str:
    """How the request log names a refresh token."""
    return hashlib.sha256(value.encode()).hexdigest()


class _Forms(HTMLParser):
    """Collects each form's inputs and buttons (name -> value) from a page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []
        self.buttons: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "form":
            self.forms.append({})
            self.buttons.append({})
        elif tag in ("input", "button") and self.forms and values.get("name"):
            if tag == "button" or values.get("type") == "submit":
                self.buttons[-1][values["name"]] = values.get("value", "")
            else:
                self.forms[-1][values["name"]] = values.get("value", "")


def _form(page: httpx.Response) -> dict[str, str]:
    parser = _Forms()
    parser.feed(page.text)
    if not parser.forms:
        raise OAuthServerError(
            f"expected a form at {page.url}, got {page.status_code}: {page.text[:500]}"
        )
    return parser.forms[0]


class OAuthServer:
    """A running DOT process, seen from the tests: its URLs, a browser, its control endpoints."""

    def __init__(self, base_url: str, introspection_auth: tuple[str, str]) -> None:
        self.base_url = base_url
        self.issuer = base_url
        self.authorization_url = f"{base_url}/authorize/"
        self.token_url = f"{base_url}/token/"
        self.revocation_url = f"{base_url}/revoke_token/"
        self.introspection_url = f"{base_url}/introspect/"
        self.device_authorization_url = f"{base_url}/device-authorization/"
        self.device_verification_url = f"{base_url}/device/"
        self.discovery_url = f"{base_url}/.well-known/openid-configuration"
        # RFC 8414 metadata: unlike the OIDC document it names the revocation and
        # introspection endpoints (neither names the device authorization endpoint).
        self.metadata_url = f"{base_url}/.well-known/oauth-authorization-server"
        self.jwks_url = f"{base_url}/.well-known/jwks.json"
        self.userinfo_url = f"{base_url}/userinfo/"
        self.stderr_path: Path | None = None  # the provider's stderr, once launched
        self._introspection_auth = introspection_auth
        self._http = httpx.Client(base_url=base_url, timeout=10)

    @classmethod
    @contextmanager
    def launch(cls, data_dir: Path, *, access_token_seconds: int = 60) -> Iterator[OAuthServer]:
        """Start the provider process, wait until it answers, stop it on exit."""
        stderr = (data_dir / "provider.stderr").open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.oauth_server.provider",
                "--data-dir",
                str(data_dir),
                "--access-token-seconds",
                str(access_token_seconds),
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            announced = _read_announcement(process, data_dir)
            server = cls(
                f"http://127.0.0.1:{announced['port']}",
                (announced["introspection_client_id"], announced["introspection_client_secret"]),
            )
            server.stderr_path = data_dir / "provider.stderr"
            server.discovery()  # answers: it is up
            try:
                yield server
            finally:
                server._http.close()
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            stderr.close()
            if process.stdout is not None:
                process.stdout.close()

    # -- the provider's own endpoints -------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        """The OIDC discovery document."""
        response = self._http.get(self.discovery_url)
        _expect(response, 200)
        return dict(response.json())

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 introspection of an access token (`active`, `scope`, `exp`, `username`, ...)."""
        response = self._http.post(
            self.introspection_url, data={"token": token}, auth=self._introspection_auth
        )
        _expect(response, 200)
        return dict(response.json())

    # -- control endpoints ------------------------------------------------------------------

    def create_client(
        self,
        confidential: bool = True,
        redirect_uris: Sequence[str] = (),
        grant_types: str | Sequence[str] = "authorization_code",
        skip_authorization: bool = False,
        name: str = "tokenfarm test client",
    ) -> tuple[str, str | None]:
        """Register an application -> (client_id, client_secret; None for a public client).

        DOT gives an application one grant type (`authorization_code`, `device_code` or
        `client_credentials`); refresh tokens come with the first two.
        """
        grants = [grant_types] if isinstance(grant_types, str) else list(grant_types)
        if len(grants) != 1:
            raise ValueError(f"DOT applications have exactly one grant type, got {grants}")
        response = self._http.post(
            "/_control/clients",
            json={
                "confidential": confidential,
                "redirect_uris": list(redirect_uris),
                "grant_type": grants[0],
                "skip_authorization": skip_authorization,
                "name": name,
            },
        )
        _expect(response, 200)
        body = response.json()
        return body["client_id"], body["client_secret"]

    def request_log(self) -> list[dict[str, Any]]:
        """Every token endpoint call since the last reset: `grant_type`, `client_id`,
        `refresh_token_sha256`, `status`, `error`, `fault` (and `processed_status`)."""
        response = self._http.get("/_control/log")
        _expect(response, 200)
        return list(response.json()["requests"])

    def refresh_tokens_presented(self) -> list[str]:
        """SHA-256 of each refresh token presented, in order (`sha256_hex` to compare)."""
        return [
            entry["refresh_token_sha256"]
            for entry in self.request_log()
            if entry["refresh_token_sha256"] is not None
        ]

    def reset_log(self) -> None:
        """Forget the request log."""
        _expect(self._http.delete("/_control/log"), 200)

    def fail_after_processing(self, n: int = 1, status: int = 502) -> None:
        """The next n token requests are processed (rotation committed), then answer `status`."""
        self._faults({"fail_after_processing": {"count": n, "status": status}})

    def slow_down_next(self, n: int = 1) -> None:
        """The next n device-code token polls answer 400 `{"error": "slow_down"}` unprocessed."""
        self._faults({"slow_down_next": n})

    def wrong_issuer_in_discovery(self, on: bool = True) -> None:
        """The discovery document (and the RFC 8414 metadata) name
        https://wrong-issuer.example.com as the issuer."""
        self._faults({"wrong_issuer_in_discovery": on})

    def reset_faults(self) -> None:
        """No fault pending."""
        _expect(self._http.delete("/_control/faults"), 200)

    def reset(self) -> None:
        """Log emptied and faults cleared (the fixture does it before every test)."""
        self.reset_log()
        self.reset_faults()

    def revoke_all_for(self, user: str = ALICE) -> dict[str, int]:
        """Revoke every token and grant `user` holds, as if they revoked access at the provider."""
        response = self._http.post("/_control/revoke-user", json={"user": user})
        _expect(response, 200)
        return dict(response.json())

    def refresh_token_state(self, token: str) -> dict[str, Any]:
        """`{"known", "revoked"}` for a refresh token (DOT introspects access tokens only)."""
        response = self._http.post("/_control/refresh-token", json={"token": token})
        _expect(response, 200)
        return dict(response.json())

    def _faults(self, body: dict[str, Any]) -> None:
        _expect(self._http.post("/_control/faults", json=body), 200)

    # -- a browser ---------------------------------------------------------------------------

    @contextmanager
    def browser(self, user: str = ALICE) -> Iterator[httpx.Client]:
        """An httpx client logged in at the provider as `user` (a cookie session); no redirects
        are followed."""
        with httpx.Client(base_url=self.base_url, timeout=10, follow_redirects=False) as client:
            login = client.get("/accounts/login/")
            _expect(login, 200)
            fields = _form(login)
            fields.update(username=user, password=USERS[user])
            answer = client.post("/accounts/login/", data=fields)
            if answer.status_code != 302:
                raise OAuthServerError(f"login as {user} failed: {answer.status_code}")
            yield client

    def consent(self, authorize_url: str, user: str = ALICE, allow: bool = True) -> str:
        """Log in, open `authorize_url`, post Allow or Deny; returns the redirect's Location
        (the client's callback with code/state or error), not followed."""
        with self.browser(user) as client:
            page = client.get(authorize_url)
            if page.is_redirect:  # skip_authorization, or an error sent to the redirect URI
                return page.headers["location"]
            _expect(page, 200)
            fields = _form(page)
            if allow:
                fields["allow"] = "Authorize"
            answer = client.post(str(page.url), data=fields)
            if not answer.is_redirect:
                raise OAuthServerError(
                    f"consent form answered {answer.status_code}: {answer.text[:500]}"
                )
            return str(answer.headers["location"])

    def approve_device(self, user_code: str, user: str = ALICE, allow: bool = True) -> None:
        """Enter `user_code` on the verification page as `user` and Accept (or Deny)."""
        with self.browser(user) as client:
            page = client.get("/device/")
            _expect(page, 200)
            fields = _form(page)
            fields["user_code"] = user_code
            confirm = client.post("/device/", data=fields)
            if not confirm.is_redirect:
                raise OAuthServerError(
                    f"user code refused ({confirm.status_code}): {confirm.text[:500]}"
                )
            confirm_url = urljoin(self.base_url + "/", confirm.headers["location"])
            page = client.get(confirm_url)
            _expect(page, 200)
            fields = _form(page)
            fields["action"] = "accept" if allow else "deny"
            answer = client.post(confirm_url, data=fields)
            if not answer.is_redirect:
                raise OAuthServerError(f"device decision answered {answer.status_code}")


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise OAuthServerError(
            f"{response.request.method} {response.url.path} answered {response.status_code}, "
            f"expected {status}: {response.text[:500]}"
        )


def _read_announcement(process: subprocess.Popen[bytes], data_dir: Path) -> dict[str, Any]:
    """The provider's one JSON line on stdout, or a failure that shows its stderr."""
    assert process.stdout is not None
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(STARTUP_TIMEOUT_SECONDS)
    if not lines or not lines[0]:
        stderr = (data_dir / "provider.stderr").read_text(errors="replace")[-3000:]
        raise OAuthServerError(
            f"the OAuth provider did not start in {STARTUP_TIMEOUT_SECONDS:.0f} s "
            f"(exit code {process.poll()}); its stderr:\n{stderr}"
        )
    return dict(json.loads(lines[0]))
