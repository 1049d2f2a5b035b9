"""A real RFC 6749 token endpoint with strict refresh-token rotation and fault injection.

Besides client secrets it speaks RFC 7523: the JWT-bearer grant (as Google service accounts use
it) and `private_key_jwt` client authentication, verifying each assertion's signature against a
registered public key. `/{tenant}/oauth2/v2.0/token` answers like Microsoft Entra ID.

Tests start it on loopback (see ``app.demo.loopback.LoopbackServer``) and drive it through a
shared ``TokenServerState``; ``python -m app.demo.token_server`` serves it for local demos.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, get_args
from urllib.parse import parse_qsl, unquote_plus

import uvicorn
from jose import jws, jwt
from jose.exceptions import JOSEError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

Fault = Literal[
    "http_500",
    "http_503",
    "rate_limited",
    "html",
    "broken_json",
    "no_access_token",
    "invalid_client",
    "invalid_grant",
    "hang",
    "http_500_after_commit",
]
FAULTS: Final[frozenset[str]] = frozenset(get_args(Fault))

TOKEN_PATH: Final = "/oauth/token"  # noqa: S105 -- a URL path, not a credential
INTROSPECT_PATH: Final = "/oauth/introspect"
# Microsoft Entra ID's v2.0 token endpoint, one per tenant.
ENTRA_TOKEN_PATH: Final = "/{tenant}/oauth2/v2.0/token"  # noqa: S105 -- a URL path
FORM_MEDIA_TYPE: Final = "application/x-www-form-urlencoded"
JWT_BEARER_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AUTHORIZATION_CODE_GRANT: Final = "authorization_code"
DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
SUPPORTED_GRANTS: Final = frozenset(
    {
        "refresh_token",
        "client_credentials",
        JWT_BEARER_GRANT,
        AUTHORIZATION_CODE_GRANT,
        DEVICE_CODE_GRANT,
    }
)
AUTHORIZE_PATH: Final = "/oauth/authorize"
DEVICE_AUTHORIZATION_PATH: Final = "/oauth/device_authorization"
DEVICE_PAGE_PATH: Final = "/device"
REVOKE_PATH: Final = "/oauth/revoke"
METADATA_PATH: Final = "/.well-known/oauth-authorization-server"
# RFC 8628 §6.1: a user code from an alphabet without vowels or look-alikes, easy to type.
USER_CODE_ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"
# RFC 8628 §3.5: each slow_down adds 5 seconds to the interval the client must keep.
SLOW_DOWN_SECONDS: Final = 5
# Assertions: accepted clock skew, and the longest lifetime accepted (Google's limit).
CLOCK_SKEW_SECONDS: Final = 60
MAX_ASSERTION_LIFETIME_SECONDS: Final = 3600
ASSERTION_ALGORITHMS: Final = ("RS256", "ES256")

# RFC 6749 §5.1: token responses carry credentials and must never be cached.
NO_STORE_HEADERS: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
BASIC_CHALLENGE: Final = {"WWW-Authenticate": 'Basic realm="token"'}

# RFC 8707 lets "resource" repeat; every other parameter must appear at most once (§3.2).
_REPEATABLE_PARAMS: Final = frozenset({"resource"})
_MAX_BODY_BYTES: Final = 64 * 1024
_MAX_FIELDS: Final = 100
_ALL_METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class OAuthError(Exception):
    """An RFC 6749 §5.2 error; its args hold only the code and description, never secrets."""

    def __init__(
        self, error: str, description: str, *, status: int = 400, challenge: bool = False
    ) -> None:
        """Create an error answered with `status` (plus a Basic challenge if `challenge`)."""
        super().__init__(error, description)
        self.error = error
        self.description = description
        self.status = status
        self.challenge = challenge


@dataclass
class _Family:
    """A chain of refresh tokens descending from one grant; revoked as a whole on reuse."""

    client_id: str
    scope: tuple[str, ...]
    refresh_tokens: list[str] = field(default_factory=list)
    access_tokens: list[str] = field(default_factory=list)
    revoked: bool = False


@dataclass
class _RefreshToken:
    """Per-token rotation status."""

    family_id: str
    used: bool = False


@dataclass
class _AccessToken:
    """What the server remembers about an issued access token, for introspection."""

    client_id: str
    scope: str
    issued_at: float
    expires_at: float
    audience: str | None = None
    resource: tuple[str, ...] = ()
    subject: str | None = None
    revoked: bool = False


@dataclass(frozen=True)
class _PublicKey:
    """A registered verification key: the JWT `alg` it goes with and its optional `kid`."""

    pem: str = field(repr=False)
    algorithm: str
    key_id: str | None = None
    scopes: tuple[str, ...] | None = None


@dataclass
class _Code:
    """An authorization code: single use, short-lived, bound to client, redirect and challenge."""

    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    code_challenge: str | None
    nonce: str | None
    expires_at: float
    used: bool = False
    family_id: str | None = None


@dataclass
class _DeviceGrant:
    """A device authorization (RFC 8628): pending until the user decides at the device page."""

    client_id: str
    user_code: str
    scope: tuple[str, ...]
    expires_at: float
    interval: int
    decision: Literal["pending", "allowed", "denied", "redeemed"] = "pending"
    last_poll_at: float | None = None


@dataclass(frozen=True)
class ConsentRequest:
    """A validated authorization request waiting for the user's Allow or Deny."""

    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    state: str | None = field(repr=False)
    code_challenge: str | None = field(repr=False)
    nonce: str | None = field(repr=False)


class TokenServerState:
    """Lock-protected state shared by a running token server and the test that drives it."""

    def __init__(
        self,
        *,
        expires_in: int = 3600,
        default_scope: str = "read",
        hang_seconds: float = 30.0,
        latency_seconds: float = 0.0,
    ) -> None:
        """Create an empty state; register clients with `add_client`."""
        self._lock = threading.Lock()
        # Plain attributes: single reads/writes are atomic, so tests may set them at any time.
        self.clients: dict[str, str] = {}
        self.unauthorized_clients: set[str] = set()
        self.expires_in = expires_in
        self.default_scope = default_scope
        self.hang_seconds = hang_seconds
        self.latency_seconds = latency_seconds
        # OAuth 2.0 Security BCP: on refresh-token reuse the server cannot tell the thief from
        # the client, so revoking the family's access tokens too is the conservative default.
        self.revoke_access_tokens_on_reuse = True
        # Seconds sent in Retry-After with the `rate_limited` and `http_503` faults.
        self.retry_after_seconds: int | None = 1
        # While set, a request that arrives waits (before its grant is checked) until this
        # event is set: tests use it to order what happens while a run awaits its answer.
        self.gate: threading.Event | None = None
        # How many requests have reached the gate and wait there (or waited): a test waits for
        # this, not for the request count, before it lets later requests through.
        self.gated = 0
        self._fault: str | None = None
        self._queued_faults: list[str] = []
        self._token_requests = 0
        self._reused_refresh_tokens = 0
        self._requests: list[dict[str, Any]] = []
        self._families: dict[str, _Family] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        # RFC 7523: issuers of JWT-bearer grants (service accounts) and clients that
        # authenticate with private_key_jwt, each with a public key; jti values already used.
        self._jwt_issuers: dict[str, _PublicKey] = {}
        self._client_keys: dict[str, _PublicKey] = {}
        self._used_jtis: dict[str, float] = {}
        # Interactive grants: the authorization code (RFC 6749 §4.1 + RFC 7636 PKCE) and the
        # device grant (RFC 8628). Redirect URIs are registered per client and matched exactly.
        self.redirect_uris: dict[str, set[str]] = {}
        self.require_pkce = True
        self.code_lifetime_seconds = 60
        self.device_expires_in = 600
        self.device_interval = 5
        self._consents: dict[str, ConsentRequest] = {}
        self._codes: dict[str, _Code] = {}
        self._devices: dict[str, _DeviceGrant] = {}
        self._user_codes: dict[str, str] = {}
        self._forced_slow_downs = 0
        # RFC 7009 revocation: what was asked (never the token itself), and an injected fault.
        self.revocation_fault: str | None = None
        self._revocations: list[dict[str, Any]] = []

    # -- configuration -------------------------------------------------------------------

    @property
    def fault(self) -> str | None:
        """The injected fault answered by /oauth/token, or None for normal behaviour."""
        return self._fault

    @fault.setter
    def fault(self, value: str | None) -> None:
        # Rejecting typos here makes a misspelt fault fail the test instead of passing silently.
        if value is not None and value not in FAULTS:
            raise ValueError(f"unknown fault {value!r}; expected one of {sorted(FAULTS)}")
        self._fault = value

    def queue_faults(self, *faults: str) -> None:
        """Answer the next requests with these faults, one each, then behave as `fault` says."""
        unknown = [fault for fault in faults if fault not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; expected some of {sorted(FAULTS)}")
        with self._lock:
            self._queued_faults.extend(faults)

    def _next_fault(self) -> str | None:
        with self._lock:
            if self._queued_faults:
                return self._queued_faults.pop(0)
        return self._fault

    def add_client(
        self, client_id: str, client_secret: str, *, redirect_uris: Sequence[str] = ()
    ) -> None:
        """Register (or re-key) a confidential client, with the redirect URIs it may use."""
        with self._lock:
            self.clients[client_id] = client_secret
            self.redirect_uris.setdefault(client_id, set()).update(redirect_uris)

    def add_redirect_uri(self, client_id: str, redirect_uri: str) -> None:
        """Let `client_id` receive authorization codes at `redirect_uri` (matched exactly)."""
        with self._lock:
            self.redirect_uris.setdefault(client_id, set()).add(redirect_uri)

    def force_slow_down(self, polls: int = 1) -> None:
        """Answer the next `polls` device-code polls `slow_down`, however well they are spaced."""
        with self._lock:
            self._forced_slow_downs += polls

    def add_jwt_issuer(
        self,
        issuer: str,
        public_key_pem: str,
        *,
        key_id: str | None = None,
        algorithm: str = "RS256",
        scopes: Sequence[str] | None = None,
    ) -> None:
        """Accept JWT-bearer grants signed by this issuer's key (a service account's email).

        With `key_id` the assertion's header must name it; with `scopes` only those may be asked.
        """
        if algorithm not in ASSERTION_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ASSERTION_ALGORITHMS}")
        with self._lock:
            self._jwt_issuers[issuer] = _PublicKey(
                public_key_pem, algorithm, key_id, tuple(scopes) if scopes is not None else None
            )

    def add_client_key(
        self,
        client_id: str,
        public_key_pem: str,
        *,
        key_id: str | None = None,
        algorithm: str = "RS256",
    ) -> None:
        """Register a client that authenticates with `private_key_jwt` (RFC 7523 §2.2)."""
        if algorithm not in ASSERTION_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ASSERTION_ALGORITHMS}")
        with self._lock:
            self._client_keys[client_id] = _PublicKey(public_key_pem, algorithm, key_id)

    def issue_refresh_token(self, client_id: str, scope: str = "read") -> str:
        """Start a new refresh-token family for `client_id` and return its first token."""
        with self._lock:
            if client_id not in self.clients and client_id not in self._client_keys:
                raise ValueError(f"unknown client_id {client_id!r}; call add_client first")
            family_id = uuid.uuid4().hex
            self._families[family_id] = _Family(client_id=client_id, scope=_split_scope(scope))
            return self._new_refresh_token_locked(family_id)

    # -- observability -------------------------------------------------------------------

    @property
    def token_requests(self) -> int:
        """Number of POSTs to /oauth/token since the last `reset_counters`."""
        with self._lock:
            return self._token_requests

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A snapshot of per-request records (no secret values) for /oauth/token POSTs."""
        # Keys: path, tenant (Entra path only), grant_type, client_id, auth_method ("basic",
        # "post", "private_key_jwt" or None), fields (names as sent), scope, audience, resource
        # (list), fault, status, error ("fault:<name>" for injected faults), and once verified
        # `assertion` / `client_assertion`: {"header": {...}, "claims": {...}} of the JWT.
        # Values of secrets and tokens (assertions included) are deliberately never recorded.
        with self._lock:
            return [dict(entry) for entry in self._requests]

    @property
    def reused_refresh_tokens(self) -> int:
        """How many times a refresh token that was already used was presented again (each
        revoked its family), since the last `reset_counters`."""
        with self._lock:
            return self._reused_refresh_tokens

    def expire_device_codes(self) -> None:
        """Let every device code run out now (the next poll answers `expired_token`)."""
        with self._lock:
            for grant in self._devices.values():
                grant.expires_at = time.time()

    @property
    def device_codes(self) -> list[str]:
        """Every device code issued, for canary checks (a client must never show one)."""
        with self._lock:
            return list(self._devices)

    def live_refresh_tokens(self, client_id: str) -> list[str]:
        """The unused refresh tokens of `client_id`'s live families (for canaries and tests)."""
        with self._lock:
            return [
                token
                for token, record in self._refresh_tokens.items()
                if not record.used
                and not self._families[record.family_id].revoked
                and self._families[record.family_id].client_id == client_id
            ]

    @property
    def revocations(self) -> list[dict[str, Any]]:
        """RFC 7009 requests: client_id, token_type_hint, kind found, status (never the token)."""
        with self._lock:
            return [dict(entry) for entry in self._revocations]

    def reset_counters(self) -> None:
        """Zero `token_requests` and clear `requests`; issued tokens are kept."""
        with self._lock:
            self._token_requests = 0
            self._reused_refresh_tokens = 0
            self._requests.clear()
            self._revocations.clear()

    def introspect(self, token: str) -> dict[str, Any]:
        """Answer an RFC 7662 introspection for an access or refresh token."""
        now = time.time()
        with self._lock:
            access = self._access_tokens.get(token)
            if access is not None:
                if access.revoked or now >= access.expires_at:
                    return {"active": False}
                answer: dict[str, Any] = {
                    "active": True,
                    "scope": access.scope,
                    "client_id": access.client_id,
                    "token_type": "Bearer",
                    "iat": int(access.issued_at),
                    "exp": int(access.expires_at),
                }
                if access.audience is not None:
                    answer["aud"] = access.audience
                if access.subject is not None:
                    answer["sub"] = access.subject
                return answer
            refresh = self._refresh_tokens.get(token)
            if refresh is not None:
                family = self._families[refresh.family_id]
                if refresh.used or family.revoked:
                    return {"active": False}
                return {
                    "active": True,
                    "scope": " ".join(family.scope),
                    "client_id": family.client_id,
                }
            return {"active": False}

    def is_active(self, token: str) -> bool:
        """Whether `token` (access or refresh) is currently valid."""
        return bool(self.introspect(token)["active"])

    # -- used by the ASGI app ------------------------------------------------------------

    def _begin_request(self, entry: dict[str, Any]) -> None:
        """Record a token request (the counter is bumped separately, before parsing)."""
        with self._lock:
            self._requests.append(entry)

    def _count_token_request(self) -> None:
        with self._lock:
            self._token_requests += 1

    def _finish_request(self, entry: dict[str, Any], status: int, error: str | None) -> None:
        with self._lock:
            entry["status"] = status
            entry["error"] = error

    def _annotate(self, entry: dict[str, Any], **fields: Any) -> None:
        """Add fields to a recorded request (under the lock: tests may be copying it)."""
        with self._lock:
            entry.update(fields)

    def _authenticate(self, client_id: str, client_secret: str) -> bool:
        with self._lock:
            expected = self.clients.get(client_id)
        # Compare even for unknown clients so timing does not reveal which ids exist.
        candidate = (expected if expected is not None else secrets.token_urlsafe(16)).encode()
        matches = hmac.compare_digest(candidate, client_secret.encode())
        return expected is not None and matches

    def _verify_assertion(
        self,
        assertion: str,
        *,
        keys: Literal["issuer", "client"],
        token_url: str,
        error: OAuthError,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(header, claims) of an assertion signed by a registered key, checked per RFC 7523 §3.

        `error` is what any failure answers (its description is replaced by the reason).
        """

        def refuse(reason: str) -> OAuthError:
            return OAuthError(error.error, reason, status=error.status)

        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.get_unverified_claims(assertion)
        except JOSEError:
            raise refuse("the assertion is not a JWT") from None
        if not isinstance(unverified, dict):
            raise refuse("the assertion's claims are not a JSON object")
        issuer = unverified.get("iss")
        with self._lock:
            registry = self._jwt_issuers if keys == "issuer" else self._client_keys
            key = registry.get(issuer) if isinstance(issuer, str) else None
        if key is None:
            raise refuse("the assertion's issuer has no registered key")
        if header.get("alg") != key.algorithm:
            raise refuse(f"the assertion must be signed with {key.algorithm}")
        if key.key_id is not None and header.get("kid") != key.key_id:
            raise refuse("the assertion's kid does not name the registered key")
        try:
            payload = jws.verify(assertion, key.pem, algorithms=[key.algorithm])
            claims = json.loads(payload)
        except (JOSEError, ValueError):
            raise refuse("the assertion's signature does not verify") from None
        now = time.time()
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if token_url not in audiences:
            raise refuse("the assertion's aud is not this token endpoint")
        expires_at, issued_at = claims.get("exp"), claims.get("iat")
        if not _is_number(expires_at):
            raise refuse("the assertion has no exp")
        if expires_at <= now - CLOCK_SKEW_SECONDS:
            raise refuse("the assertion has expired")
        if issued_at is not None or keys == "issuer":
            if not _is_number(issued_at):
                raise refuse("the assertion has no iat")
            if issued_at > now + CLOCK_SKEW_SECONDS:
                raise refuse("the assertion's iat is in the future")
            if expires_at - issued_at > MAX_ASSERTION_LIFETIME_SECONDS:
                raise refuse(
                    f"the assertion may live at most {MAX_ASSERTION_LIFETIME_SECONDS} seconds"
                )
        jti = claims.get("jti")
        if keys == "client" and not isinstance(jti, str):
            raise refuse("the client assertion has no jti")
        if jti is not None:
            with self._lock:
                self._used_jtis = {j: t for j, t in self._used_jtis.items() if t > now}
                if jti in self._used_jtis:
                    raise refuse("the assertion's jti was already used")
                self._used_jtis[str(jti)] = float(expires_at) + CLOCK_SKEW_SECONDS
        if keys == "issuer":
            allowed = key.scopes
            claims_scope = claims.get("scope")
            if allowed is not None and isinstance(claims_scope, str):
                if not set(_split_scope(claims_scope)) <= set(allowed):
                    raise OAuthError("invalid_scope", "the assertion asks for a scope not granted")
        return {k: header[k] for k in ("alg", "kid", "typ") if k in header}, claims

    # -- interactive grants: authorization code, device code, revocation ------------------

    def _redirect_uri_registered(self, client_id: str, redirect_uri: str) -> bool:
        with self._lock:
            return redirect_uri in self.redirect_uris.get(client_id, set())

    def _open_consent(self, request: ConsentRequest) -> str:
        """Keep a validated authorization request until the user decides; its ticket."""
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            self._consents[ticket] = request
        return ticket

    def _take_consent(self, ticket: str) -> ConsentRequest | None:
        """The request behind `ticket`, once: a decision can't be posted twice."""
        with self._lock:
            return self._consents.pop(ticket, None)

    def _issue_code(self, request: ConsentRequest) -> str:
        """A single-use code for an allowed request, bound to its client, redirect, challenge."""
        code = "code_" + secrets.token_urlsafe(32)
        with self._lock:
            self._codes[code] = _Code(
                client_id=request.client_id,
                redirect_uri=request.redirect_uri,
                scope=request.scope,
                code_challenge=request.code_challenge,
                nonce=request.nonce,
                expires_at=time.time() + self.code_lifetime_seconds,
            )
        return code

    def _redeem_code(
        self, client_id: str, code: str | None, redirect_uri: str | None, verifier: str | None
    ) -> dict[str, Any]:
        """RFC 6749 §4.1.3 + RFC 7636 §4.6: tokens for a code; a second use revokes them."""
        if code is None:
            raise OAuthError("invalid_request", "missing code")
        with self._lock:
            record = self._codes.get(code)
            if record is None:
                raise OAuthError("invalid_grant", "the authorization code is unknown")
            if record.used:
                # §4.1.2: a code used twice revokes every token issued from it.
                if record.family_id is not None:
                    self._revoke_family_locked(self._families[record.family_id], everything=True)
                raise OAuthError("invalid_grant", "the authorization code was already used")
            if record.client_id != client_id:
                raise OAuthError("invalid_grant", "the code was issued to another client")
            if time.time() >= record.expires_at:
                raise OAuthError("invalid_grant", "the authorization code has expired")
            if redirect_uri != record.redirect_uri:
                raise OAuthError("invalid_grant", "redirect_uri differs from the authorization")
            if record.code_challenge is not None:
                if verifier is None:
                    raise OAuthError("invalid_grant", "the code_verifier is missing")
                if not hmac.compare_digest(pkce_challenge(verifier), record.code_challenge):
                    raise OAuthError("invalid_grant", "the code_verifier does not match")
            elif verifier is not None:
                raise OAuthError("invalid_grant", "a code_verifier for a code without challenge")
            record.used = True
            response, record.family_id = self._new_grant_locked(client_id, record.scope)
            return response

    def _new_grant_locked(
        self, client_id: str, scope: tuple[str, ...]
    ) -> tuple[dict[str, Any], str]:
        """A new refresh-token family with its first access and refresh token; its id."""
        family_id = uuid.uuid4().hex
        family = _Family(client_id=client_id, scope=scope)
        self._families[family_id] = family
        response = self._new_access_token_locked(client_id, " ".join(scope), family=family)
        response["refresh_token"] = self._new_refresh_token_locked(family_id)
        return response, family_id

    def _start_device(self, client_id: str, scope: tuple[str, ...]) -> dict[str, Any]:
        """RFC 8628 §3.2: a device code (for the client) and a user code (for the person)."""
        device_code = "dc_" + secrets.token_urlsafe(32)
        with self._lock:
            user_code = new_user_code()
            while user_code in self._user_codes:
                user_code = new_user_code()
            self._devices[device_code] = _DeviceGrant(
                client_id=client_id,
                user_code=user_code,
                scope=scope,
                expires_at=time.time() + self.device_expires_in,
                interval=self.device_interval,
            )
            self._user_codes[user_code] = device_code
            return {
                "device_code": device_code,
                "user_code": f"{user_code[:4]}-{user_code[4:]}",
                "expires_in": self.device_expires_in,
                "interval": self.device_interval,
            }

    def _device_request(self, user_code: str) -> tuple[str, tuple[str, ...]] | None:
        """(client_id, scope) of a pending device authorization, for the verification page."""
        with self._lock:
            grant = self._pending_device_locked(user_code)
            return None if grant is None else (grant.client_id, grant.scope)

    def _decide_device(self, user_code: str, allow: bool) -> bool:
        """Record the person's decision; False when the code is unknown, used or expired."""
        with self._lock:
            grant = self._pending_device_locked(user_code)
            if grant is None:
                return False
            grant.decision = "allowed" if allow else "denied"
            return True

    def _pending_device_locked(self, user_code: str) -> _DeviceGrant | None:
        normalized = "".join(c for c in user_code.upper() if c.isalnum())
        device_code = self._user_codes.get(normalized)
        grant = self._devices.get(device_code) if device_code else None
        if grant is None or grant.decision != "pending" or time.time() >= grant.expires_at:
            return None
        return grant

    def _poll_device(self, client_id: str, device_code: str | None) -> dict[str, Any]:
        """RFC 8628 §3.4-3.5: tokens once allowed; pending, slow_down, denied or expired."""
        if device_code is None:
            raise OAuthError("invalid_request", "missing device_code")
        now = time.time()
        with self._lock:
            grant = self._devices.get(device_code)
            if grant is None or grant.client_id != client_id:
                raise OAuthError("invalid_grant", "the device code is unknown")
            if grant.decision == "redeemed":
                raise OAuthError("invalid_grant", "the device code was already used")
            if now >= grant.expires_at:
                raise OAuthError("expired_token", "the device code has expired")
            too_soon = grant.last_poll_at is not None and now - grant.last_poll_at < (
                grant.interval - 0.2  # a little slack for timers that fire early
            )
            grant.last_poll_at = now
            if self._forced_slow_downs > 0 or too_soon:
                self._forced_slow_downs = max(0, self._forced_slow_downs - 1)
                grant.interval += SLOW_DOWN_SECONDS
                raise OAuthError("slow_down", f"poll at most every {grant.interval} seconds")
            if grant.decision == "pending":
                raise OAuthError("authorization_pending", "the user has not decided yet")
            if grant.decision == "denied":
                raise OAuthError("access_denied", "the user denied the authorization")
            grant.decision = "redeemed"
            response, _ = self._new_grant_locked(client_id, grant.scope)
            return response

    def _revoke(self, client_id: str, token: str | None, hint: str | None) -> dict[str, Any]:
        """RFC 7009 §2: revoke a refresh token's family (and its access tokens) or one access
        token; unknown tokens are fine (§2.2). The record names the kind, never the token."""
        if token is None:
            raise OAuthError("invalid_request", "missing token")
        with self._lock:
            entry: dict[str, Any] = {"client_id": client_id, "token_type_hint": hint}
            refresh = self._refresh_tokens.get(token)
            access = self._access_tokens.get(token)
            if refresh is not None:
                family = self._families[refresh.family_id]
                if family.client_id != client_id:
                    raise OAuthError("unauthorized_client", "the token belongs to another client")
                self._revoke_family_locked(family, everything=True)
                entry["kind"] = "refresh_token"
            elif access is not None:
                if access.client_id != client_id:
                    raise OAuthError("unauthorized_client", "the token belongs to another client")
                access.revoked = True
                entry["kind"] = "access_token"
            else:
                entry["kind"] = None
            self._revocations.append(entry)
            return entry

    def _record_revocation(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._revocations.append(entry)

    def _issue_for_assertion(self, issuer: str, subject: str | None, scope: str) -> dict[str, Any]:
        with self._lock:
            return self._new_access_token_locked(issuer, scope, subject=subject)

    def _redeem_refresh_token(
        self, client_id: str, refresh_token: str, requested_scope: tuple[str, ...] | None
    ) -> dict[str, Any]:
        """Rotate `refresh_token` atomically; a second use revokes its whole family."""
        with self._lock:
            record = self._refresh_tokens.get(refresh_token)
            if record is None:
                raise OAuthError("invalid_grant", "refresh token is unknown")
            family = self._families[record.family_id]
            if family.client_id != client_id:
                raise OAuthError("invalid_grant", "refresh token was issued to another client")
            if family.revoked:
                raise OAuthError("invalid_grant", "refresh token has been revoked")
            # Reuse detection comes before scope checks: a replayed token must always burn the
            # family, whatever else is wrong with the request.
            if record.used:
                self._reused_refresh_tokens += 1
                self._revoke_family_locked(family)
                raise OAuthError(
                    "invalid_grant", "refresh token was already used; its token family is revoked"
                )
            if requested_scope is not None and not set(requested_scope) <= set(family.scope):
                raise OAuthError("invalid_scope", "requested scope exceeds the granted scope")
            record.used = True
            new_refresh_token = self._new_refresh_token_locked(record.family_id)
            # RFC 6749 §6: the new refresh token keeps the original scope even if the access
            # token is narrowed.
            scope = " ".join(requested_scope or family.scope)
            response = self._new_access_token_locked(client_id, scope, family=family)
            response["refresh_token"] = new_refresh_token
            return response

    def _issue_client_credentials(
        self,
        client_id: str,
        requested_scope: tuple[str, ...] | None,
        audience: str | None,
        resource: tuple[str, ...],
    ) -> dict[str, Any]:
        with self._lock:
            scope = " ".join(requested_scope) if requested_scope else self.default_scope
            return self._new_access_token_locked(
                client_id, scope, audience=audience, resource=resource
            )

    def _new_refresh_token_locked(self, family_id: str) -> str:
        token = "rt_" + secrets.token_urlsafe(32)
        self._refresh_tokens[token] = _RefreshToken(family_id=family_id)
        self._families[family_id].refresh_tokens.append(token)
        return token

    def _new_access_token_locked(
        self,
        client_id: str,
        scope: str,
        *,
        family: _Family | None = None,
        audience: str | None = None,
        resource: tuple[str, ...] = (),
        subject: str | None = None,
    ) -> dict[str, Any]:
        expires_in = self.expires_in
        now = time.time()
        token = "at_" + secrets.token_urlsafe(32)
        self._access_tokens[token] = _AccessToken(
            client_id=client_id,
            scope=scope,
            issued_at=now,
            expires_at=now + expires_in,
            audience=audience,
            resource=resource,
            subject=subject,
        )
        if family is not None:
            family.access_tokens.append(token)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": scope,
        }

    def _revoke_family_locked(self, family: _Family, *, everything: bool = False) -> None:
        family.revoked = True
        if everything or self.revoke_access_tokens_on_reuse:
            for token in family.access_tokens:
                self._access_tokens[token].revoked = True


@dataclass(frozen=True)
class _Credentials:
    """Client credentials as presented; the secret is kept out of repr on purpose."""

    method: Literal["basic", "post", "private_key_jwt"] | None
    client_id: str | None
    client_secret: str | None = field(default=None, repr=False)
    client_assertion: str | None = field(default=None, repr=False)
    basic_attempted: bool = False
    problem: OAuthError | None = None


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2: the S256 challenge of a verifier."""
    digest = hashlib.sha256(verifier.encode("ascii", errors="replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_user_code() -> str:
    """Eight characters from `USER_CODE_ALPHABET` (shown as XXXX-XXXX)."""
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))


def _is_number(value: Any) -> bool:
    """A JSON number (NumericDate), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _split_scope(scope: str) -> tuple[str, ...]:
    """Split an RFC 6749 §3.3 scope string, dropping duplicates but keeping order."""
    return tuple(dict.fromkeys(scope.split()))


async def _read_form(request: Request) -> tuple[dict[str, list[str]], list[str]]:
    """Parse a urlencoded body into non-empty values per name, plus the names as sent."""
    content_type = request.headers.get("content-type", "")
    media_type, _, params = content_type.partition(";")
    if media_type.strip().lower() != FORM_MEDIA_TYPE:
        raise OAuthError("invalid_request", f"request body must be {FORM_MEDIA_TYPE}")
    charset = params.strip().lower().removeprefix("charset=").strip('"')
    if params.strip() and charset not in ("utf-8", "utf8"):
        raise OAuthError("invalid_request", "request body must be UTF-8")
    body = await request.body()
    if len(body) > _MAX_BODY_BYTES:
        raise OAuthError("invalid_request", "request body is too large")
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        # `from None`: the original exception would carry the raw body, secrets included.
        raise OAuthError("invalid_request", "request body is not valid form encoding") from None
    names = list(dict.fromkeys(name for name, _ in pairs))
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        # RFC 6749 §3.1: a parameter sent without a value is treated as omitted.
        if value:
            form.setdefault(name, []).append(value)
    for name, values in form.items():
        if len(values) > 1 and name not in _REPEATABLE_PARAMS:
            raise OAuthError("invalid_request", f"parameter {name!r} is repeated")
    return form, names


def _single(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _parse_credentials(request: Request, form: dict[str, list[str]]) -> _Credentials:
    """Find which client authentication method was used, without validating the secret."""
    header = request.headers.get("authorization")
    body_id = _single(form, "client_id")
    body_secret = _single(form, "client_secret")
    if "client_assertion" in form or "client_assertion_type" in form:
        return _assertion_credentials(form, body_id, header is not None or body_secret is not None)
    if header is None:
        if body_secret is not None:
            return _Credentials("post", body_id, body_secret)
        return _Credentials(None, body_id)

    scheme, _, param = header.strip().partition(" ")
    if scheme.lower() != "basic":
        problem = OAuthError(
            "invalid_client",
            "only Basic client authentication is supported",
            status=401,
            challenge=True,
        )
        return _Credentials(None, body_id, basic_attempted=True, problem=problem)
    if body_secret is not None:
        problem = OAuthError(
            "invalid_request", "use either HTTP Basic or client_secret in the body, not both"
        )
        return _Credentials("basic", body_id, basic_attempted=True, problem=problem)
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
        raw_id, colon, raw_secret = decoded.partition(":")
        # RFC 6749 §2.3.1: id and secret are form-urlencoded before being base64-encoded.
        client_id = unquote_plus(raw_id, errors="strict")
        client_secret = unquote_plus(raw_secret, errors="strict")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        colon, client_id, client_secret = "", "", ""
    if not colon or not client_id:
        problem = OAuthError(
            "invalid_client", "malformed HTTP Basic credentials", status=401, challenge=True
        )
        return _Credentials("basic", None, basic_attempted=True, problem=problem)
    if body_id is not None and body_id != client_id:
        problem = OAuthError("invalid_request", "client_id in the body differs from HTTP Basic")
        return _Credentials("basic", client_id, basic_attempted=True, problem=problem)
    return _Credentials("basic", client_id, client_secret, basic_attempted=True)


def _assertion_credentials(
    form: dict[str, list[str]], body_id: str | None, other_method: bool
) -> _Credentials:
    """`private_key_jwt` credentials (RFC 7523 §2.2); the signature is checked later."""
    assertion = _single(form, "client_assertion")
    problem = None
    if other_method:
        problem = OAuthError(
            "invalid_request", "use one client authentication method, not a client_assertion too"
        )
    elif _single(form, "client_assertion_type") != CLIENT_ASSERTION_TYPE:
        problem = OAuthError(
            "invalid_client",
            f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}",
            status=401,
        )
    elif assertion is None:
        problem = OAuthError("invalid_request", "client_assertion_type without client_assertion")
    client_id = body_id
    if client_id is None and assertion is not None:
        try:
            subject = jwt.get_unverified_claims(assertion).get("sub")
        except (JOSEError, AttributeError):
            subject = None
        client_id = subject if isinstance(subject, str) else None
    return _Credentials("private_key_jwt", client_id, client_assertion=assertion, problem=problem)


def _json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(body, status_code=status, headers={**NO_STORE_HEADERS, **(headers or {})})


def _error_response(error: OAuthError, headers: dict[str, str] | None = None) -> Response:
    extra = {**(BASIC_CHALLENGE if error.challenge else {}), **(headers or {})}
    body = {"error": error.error, "error_description": error.description}
    return _json(body, status=error.status, headers=extra)


def _fault_response(
    fault: str | None, credentials: _Credentials, retry_after_seconds: int | None
) -> Response | None:
    """The canned answer for a fault, or None when the request should be processed."""
    retry_after = {} if retry_after_seconds is None else {"Retry-After": str(retry_after_seconds)}
    if fault == "http_500":
        return _json({"error": "server_error"}, status=500)
    if fault == "http_503":
        return _json({"error": "temporarily_unavailable"}, status=503, headers=retry_after)
    if fault == "rate_limited":
        return _json({"error": "slow_down"}, status=429, headers=retry_after)
    if fault == "invalid_grant":
        return _error_response(OAuthError("invalid_grant", "the refresh token is not valid"))
    if fault == "html":
        html = "<html><body><h1>Service temporarily unavailable</h1></body></html>"
        return Response(html, media_type="text/html", headers=NO_STORE_HEADERS)
    if fault == "broken_json":
        # Truncated mid-value, like a proxy cutting the connection short.
        truncated = '{"access_token": "at_truncated", "token_type": "Bea'
        return Response(truncated, media_type="application/json", headers=NO_STORE_HEADERS)
    if fault == "no_access_token":
        return _json({"token_type": "Bearer", "expires_in": 3600})
    if fault == "invalid_client":
        error = OAuthError(
            "invalid_client",
            "client authentication failed",
            status=401,
            challenge=credentials.basic_attempted,
        )
        return _error_response(error)
    return None


def _authenticate_client(
    state: TokenServerState,
    credentials: _Credentials,
    token_url: str,
    entry: dict[str, Any],
) -> str:
    """The authenticated client's id: a secret (Basic or body) or a signed client assertion."""
    if credentials.method is None or credentials.client_id is None:
        raise OAuthError("invalid_client", "client authentication required", status=401)
    if credentials.method == "private_key_jwt":
        assert credentials.client_assertion is not None  # _assertion_credentials checked it
        failure = OAuthError("invalid_client", "", status=401)
        header, claims = state._verify_assertion(
            credentials.client_assertion, keys="client", token_url=token_url, error=failure
        )
        # RFC 7523 §3 (as §2.2 uses it): iss and sub are both the client's id.
        if claims.get("iss") != credentials.client_id or claims.get("sub") != claims.get("iss"):
            raise OAuthError(
                "invalid_client",
                "the client assertion's iss and sub must be the client_id",
                status=401,
            )
        state._annotate(entry, client_assertion={"header": header, "claims": claims})
        return credentials.client_id
    if not state._authenticate(credentials.client_id, credentials.client_secret or ""):
        raise OAuthError(
            "invalid_client",
            "client authentication failed",
            status=401,
            challenge=credentials.method == "basic",
        )
    return credentials.client_id


def _jwt_bearer_grant(
    state: TokenServerState,
    form: dict[str, list[str]],
    token_url: str,
    entry: dict[str, Any],
) -> dict[str, Any]:
    """RFC 7523 §2.1: an access token for the issuer (or `sub`) of a signed assertion."""
    assertion = _single(form, "assertion")
    if assertion is None:
        raise OAuthError("invalid_request", "missing assertion")
    failure = OAuthError("invalid_grant", "")
    header, claims = state._verify_assertion(
        assertion, keys="issuer", token_url=token_url, error=failure
    )
    state._annotate(entry, assertion={"header": header, "claims": claims})
    # Google puts the scope in the assertion; RFC 7523 §2.1 in the request. Either will do.
    scope = claims.get("scope") if isinstance(claims.get("scope"), str) else _single(form, "scope")
    if not scope:
        raise OAuthError("invalid_scope", "the assertion or the request must name a scope")
    subject = claims.get("sub")
    delegated = subject if isinstance(subject, str) and subject != claims["iss"] else None
    return state._issue_for_assertion(claims["iss"], delegated, " ".join(_split_scope(scope)))


def _check_entra_scope(requested_scope: tuple[str, ...] | None) -> None:
    """Entra ID's v2.0 client-credentials rule: the scope is a resource's `/.default`."""
    if not requested_scope:
        raise OAuthError("invalid_request", "the 'scope' parameter is required")
    if not all(scope.endswith("/.default") for scope in requested_scope):
        raise OAuthError("invalid_scope", "client credentials need a scope ending in /.default")


def _process(
    state: TokenServerState,
    form: dict[str, list[str]],
    credentials: _Credentials,
    *,
    token_url: str,
    entry: dict[str, Any],
    tenant: str | None = None,
) -> dict[str, Any]:
    """Validate a well-formed token request and perform its grant."""
    if credentials.problem is not None:
        raise credentials.problem
    grant_type = _single(form, "grant_type")
    if grant_type is None:
        raise OAuthError("invalid_request", "missing grant_type")

    if grant_type == JWT_BEARER_GRANT and credentials.method is None:
        # RFC 7523 §3.1: the JWT-bearer grant may come without client authentication.
        return _jwt_bearer_grant(state, form, token_url, entry)
    client_id = _authenticate_client(state, credentials, token_url, entry)

    if grant_type not in SUPPORTED_GRANTS:
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
    if client_id in state.unauthorized_clients:
        raise OAuthError("unauthorized_client", f"client may not use grant_type {grant_type!r}")

    scope_param = _single(form, "scope")
    requested_scope = _split_scope(scope_param) if scope_param is not None else None
    if grant_type == JWT_BEARER_GRANT:
        return _jwt_bearer_grant(state, form, token_url, entry)
    if grant_type == AUTHORIZATION_CODE_GRANT:
        return state._redeem_code(
            client_id,
            _single(form, "code"),
            _single(form, "redirect_uri"),
            _single(form, "code_verifier"),
        )
    if grant_type == DEVICE_CODE_GRANT:
        return state._poll_device(client_id, _single(form, "device_code"))
    if grant_type == "refresh_token":
        refresh_token = _single(form, "refresh_token")
        if refresh_token is None:
            raise OAuthError("invalid_request", "missing refresh_token")
        return state._redeem_refresh_token(client_id, refresh_token, requested_scope)
    if tenant is not None:
        _check_entra_scope(requested_scope)
    return state._issue_client_credentials(
        client_id,
        requested_scope,
        audience=_single(form, "audience"),
        resource=tuple(form.get("resource", ())),
    )


def create_token_server(state: TokenServerState) -> ASGIApp:
    """Build the ASGI app serving /oauth/token, /oauth/introspect, the Entra-style
    /{tenant}/oauth2/v2.0/token, the consent and device pages, device authorization and
    revocation from `state`."""

    async def token_endpoint(request: Request) -> Response:
        if request.method != "POST":
            error = OAuthError(
                "invalid_request", "the token endpoint only accepts POST", status=405
            )
            return _error_response(error, headers={"Allow": "POST"})
        # Counted before anything else so tests see every attempt, faulted or malformed.
        state._count_token_request()

        form: dict[str, list[str]] = {}
        names: list[str] = []
        form_problem: OAuthError | None = None
        try:
            form, names = await _read_form(request)
        except OAuthError as exc:
            form_problem = exc
        credentials = _parse_credentials(request, form)
        if form_problem is not None:
            credentials = replace(credentials, problem=form_problem)
        fault = state._next_fault()
        tenant = request.path_params.get("tenant")
        entry: dict[str, Any] = {
            "path": request.url.path,
            "tenant": tenant,
            "grant_type": _single(form, "grant_type"),
            "client_id": credentials.client_id,
            "auth_method": credentials.method,
            "fields": names,
            "scope": _single(form, "scope"),
            "audience": _single(form, "audience"),
            "resource": list(form.get("resource", ())),
            "fault": fault,
            "status": None,
            "error": None,
            # When it arrived (epoch seconds): tests measure how polls are spaced.
            "at": time.time(),
        }
        state._begin_request(entry)

        gate = state.gate
        if gate is not None:
            with state._lock:
                state.gated += 1
            await asyncio.to_thread(gate.wait, 30)
        if state.latency_seconds > 0:
            await asyncio.sleep(state.latency_seconds)
        response = _fault_response(fault, credentials, state.retry_after_seconds)
        if response is not None:
            state._finish_request(entry, response.status_code, f"fault:{fault}")
            return response
        if fault == "hang":
            # Answers normally afterwards, so a client that gave up still loses its token.
            await asyncio.sleep(state.hang_seconds)

        # What an assertion's `aud` must name: this endpoint's own URL, as the client called it.
        token_url = f"{request.url.scheme}://{request.url.netloc}{request.url.path}"
        try:
            body = _process(
                state, form, credentials, token_url=token_url, entry=entry, tenant=tenant
            )
        except OAuthError as exc:
            state._finish_request(entry, exc.status, exc.error)
            return _error_response(exc)
        if fault == "http_500_after_commit":
            # The grant was processed (a refresh token rotated) and then the server failed:
            # the answer that carried the new tokens is lost.
            state._finish_request(entry, 500, f"fault:{fault}")
            return _json({"error": "server_error"}, status=500)
        state._finish_request(entry, 200, None)
        return _json(body)

    async def introspect_endpoint(request: Request) -> Response:
        # RFC 7662 wants the caller authenticated; this demo server leaves it open on purpose
        # so tests can check tokens without another set of credentials.
        try:
            form, _ = await _read_form(request)
        except OAuthError as exc:
            return _error_response(exc)
        token = _single(form, "token")
        if token is None:
            return _error_response(OAuthError("invalid_request", "missing token"))
        return _json(state.introspect(token))

    async def authenticated_form(
        request: Request, endpoint: str
    ) -> tuple[str, dict[str, list[str]]]:
        """The client (authenticated as at the token endpoint) and the form of a request."""
        form, _ = await _read_form(request)
        credentials = _parse_credentials(request, form)
        if credentials.problem is not None:
            raise credentials.problem
        url = f"{request.url.scheme}://{request.url.netloc}{endpoint}"
        client_id = _authenticate_client(state, credentials, url, {})
        return client_id, form

    async def device_authorization_endpoint(request: Request) -> Response:
        # RFC 8628 §3.1: a confidential client authenticates as at the token endpoint.
        try:
            client_id, form = await authenticated_form(request, DEVICE_AUTHORIZATION_PATH)
            scope_param = _single(form, "scope")
            scope = _split_scope(scope_param) if scope_param else (state.default_scope,)
            body = state._start_device(client_id, scope)
        except OAuthError as exc:
            return _error_response(exc)
        base = f"{request.url.scheme}://{request.url.netloc}"
        body["verification_uri"] = f"{base}{DEVICE_PAGE_PATH}"
        body["verification_uri_complete"] = (
            f"{base}{DEVICE_PAGE_PATH}?user_code={body['user_code']}"
        )
        return _json(body)

    async def revocation_endpoint(request: Request) -> Response:
        # RFC 7009 §2.1: the client authenticates; only its own tokens are revoked.
        fault = state.revocation_fault
        if fault is not None:
            state._record_revocation({"fault": fault})
            response = _fault_response(fault, _Credentials(None, None), state.retry_after_seconds)
            if response is not None:
                return response
        try:
            client_id, form = await authenticated_form(request, REVOKE_PATH)
            state._revoke(client_id, _single(form, "token"), _single(form, "token_type_hint"))
        except OAuthError as exc:
            state._record_revocation({"status": exc.status, "error": exc.error})
            return _error_response(exc)
        # §2.2: 200 whether or not the token was known.
        return Response(status_code=200, headers=NO_STORE_HEADERS)

    async def metadata_endpoint(request: Request) -> Response:
        # RFC 8414 (and the OpenID Connect discovery subset that applies): where everything is.
        base = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(
            {
                "issuer": base,
                "authorization_endpoint": f"{base}{AUTHORIZE_PATH}",
                "token_endpoint": f"{base}{TOKEN_PATH}",
                "revocation_endpoint": f"{base}{REVOKE_PATH}",
                "introspection_endpoint": f"{base}{INTROSPECT_PATH}",
                "device_authorization_endpoint": f"{base}{DEVICE_AUTHORIZATION_PATH}",
                "response_types_supported": ["code"],
                "grant_types_supported": sorted(SUPPORTED_GRANTS),
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                    "private_key_jwt",
                ],
            }
        )

    # The browser-facing pages live in their own module (it imports this one's helpers).
    from app.demo.consent import consent_routes

    app = Starlette(
        routes=[
            # Every method is routed here so non-POSTs get an RFC-shaped 405, not plain text.
            Route(TOKEN_PATH, token_endpoint, methods=_ALL_METHODS),
            Route(INTROSPECT_PATH, introspect_endpoint, methods=["POST"]),
            Route(ENTRA_TOKEN_PATH, token_endpoint, methods=_ALL_METHODS),
            Route(DEVICE_AUTHORIZATION_PATH, device_authorization_endpoint, methods=["POST"]),
            Route(REVOKE_PATH, revocation_endpoint, methods=["POST"]),
            Route(METADATA_PATH, metadata_endpoint, methods=["GET"]),
            *consent_routes(state),
        ]
    )
    app.state.token_server = state
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a demo token server with one client and print its initial refresh token."""
    parser = argparse.ArgumentParser(
        prog="python -m app.demo.token_server",
        description="Serve an RFC 6749 token endpoint with strict refresh-token rotation.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--client-id", default="demo-client")
    parser.add_argument("--client-secret", default="demo-secret")
    parser.add_argument("--scope", default="read")
    parser.add_argument("--expires-in", type=int, default=3600)
    args = parser.parse_args(argv)

    state = TokenServerState(expires_in=args.expires_in, default_scope=args.scope)
    state.add_client(args.client_id, args.client_secret)
    refresh_token = state.issue_refresh_token(args.client_id, scope=args.scope)
    # The token alone goes to stdout so scripts can capture it; the rest is for humans.
    print(refresh_token, flush=True)
    print(
        f"token endpoint: http://{args.host}:{args.port}{TOKEN_PATH} "
        f"(client_id={args.client_id}, scope={args.scope!r})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(create_token_server(state), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
