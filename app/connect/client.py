"""Tokenfarm as an OAuth client at a provider's token endpoint: the code exchange (this flow) and
the device grant's polling (app/connect device code) both send their requests here.

Two steps, so no database transaction stays open across the HTTP call: `client_credentials`
reads the client's credentials (a short read), `token_request` sends the form. Client
authentication follows the provider's `client_auth` (RFC 6749 §2.3.1 `basic`/`post`,
RFC 7523 §2.2 `private_key_jwt`, `none` for a public client). Nothing this module raises or logs
quotes a code, verifier, token or client secret.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from jose import jwt
from jose.exceptions import JOSEError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.crypto import Keyring
from app.errors import BadUpstreamResponse, DestinationNotAllowed, InvalidInput, UpstreamFailed
from app.outbound import Outbound, OutboundResponse, describe_target
from app.pipeline.wire import origin_of_url
from app.presets.catalog import ASSERTION_LIFETIME_SECONDS, CLIENT_ASSERTION_TYPE
from app.providers.resolve import ResolvedProvider
from app.secrets.store import SecretStore

MAX_DESCRIPTION_CHARS = 300
REDACTED = "[redacted]"


@dataclass(frozen=True)
class ClientCredentials:
    """The client's credentials at one provider, read from the secrets that hold them."""

    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)


class TokenEndpointError(UpstreamFailed):
    """The token endpoint refused (an OAuth error answer, RFC 6749 §5.2) or failed.

    `error` is the OAuth error code (`invalid_grant`, `access_denied`, `slow_down`, ...) or None;
    `error_description` is the provider's text, capped, without control characters and with any
    value of the request blanked out (a provider may echo what it was sent).
    """

    error_type = "token_endpoint_error"

    def __init__(
        self, message: str, *, upstream_status: int, error: str | None, description: str | None
    ) -> None:
        super().__init__(message, upstream_status=upstream_status, oauth_error=error)
        self.error = error
        self.error_description = description


def clean_text(text: Any, hidden: list[str], limit: int = MAX_DESCRIPTION_CHARS) -> str | None:
    """Provider text fit to show: printable, at most `limit` characters, request values blanked."""
    if not isinstance(text, str) or not text:
        return None
    for value in sorted((v for v in hidden if v and len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    printable = "".join(c if c.isprintable() else " " for c in text)
    return printable[:limit] + ("…" if len(printable) > limit else "")


async def client_credentials(
    session: AsyncSession, keyring: Keyring, settings: Settings, provider: ResolvedProvider
) -> ClientCredentials:
    """The client id (and secret or private key) of `provider`, read from their secrets.

    A credential secret that declares `allowed_destinations` must allow the token endpoint's
    origin, as it would for a run (the preset binder adds it when it binds a refresher).
    """
    store = SecretStore(session, keyring, settings)

    async def value_of(name: str | None, what: str) -> str | None:
        if name is None:
            return None
        secret, current = await store.get_current(name)
        if current is None:
            raise InvalidInput(
                f"provider {provider.name!r}: the secret {name!r} ({what}) has no value; set it "
                f"with PUT /v1/secrets/{name}/value"
            )
        allowed = secret.allowed_destinations
        if allowed is not None and provider.token_url is not None:
            origin = origin_of_url(provider.token_url)
            if origin not in allowed:
                raise DestinationNotAllowed(
                    f"secret {name!r} ({what}) may not be sent to {origin}: add it to its "
                    "allowed_destinations"
                )
        value = keyring.decrypt(current.ciphertext)
        return value if isinstance(value, str) else json.dumps(value)

    client_id = await value_of(provider.client_id_secret, "client id")
    if client_id is None:
        raise InvalidInput(
            f"provider {provider.name!r} names no client_id_secret", path="client_id_secret"
        )
    return ClientCredentials(
        client_id=client_id,
        client_secret=await value_of(provider.client_secret_secret, "client secret"),
        private_key=await value_of(provider.private_key_secret, "private key"),
    )


def _authenticate(
    provider: ResolvedProvider, credentials: ClientCredentials, url: str
) -> tuple[dict[str, str], tuple[str, str] | None]:
    """(form fields, basic auth) that authenticate the client per `client_auth` at `url` (the
    endpoint called: a client assertion's audience)."""
    if provider.client_auth == "basic":
        return {}, (credentials.client_id, credentials.client_secret or "")
    if provider.client_auth == "post":
        return {
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret or "",
        }, None
    if provider.client_auth == "private_key_jwt":
        now = int(time.time())
        claims = {
            "iss": credentials.client_id,
            "sub": credentials.client_id,
            "aud": url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECONDS,
            "jti": str(uuid.uuid4()),
        }
        try:
            assertion = jwt.encode(claims, credentials.private_key or "", algorithm="RS256")
        except (JOSEError, ValueError, TypeError):
            raise InvalidInput(
                f"provider {provider.name!r}: the private key could not sign a client assertion "
                "(an RSA private key in PEM is needed)",
                path="private_key_secret",
            ) from None
        return {
            "client_id": credentials.client_id,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        }, None
    return {"client_id": credentials.client_id}, None  # none: a public client


async def token_request(
    outbound: Outbound,
    credentials: ClientCredentials,
    provider: ResolvedProvider,
    form: dict[str, str],
) -> dict[str, Any]:
    """POST `form` (plus client authentication) to the provider's token endpoint through the
    egress guard; the JSON answer, or TokenEndpointError (an OAuth error answer: with `error`;
    any other non-2xx: without), never quoting what was sent."""
    token_url = provider.token_url
    if token_url is None:
        raise InvalidInput(f"provider {provider.name!r} has no token endpoint", path="token_url")
    return await endpoint_request(outbound, credentials, provider, token_url, form)


async def endpoint_request(
    outbound: Outbound,
    credentials: ClientCredentials,
    provider: ResolvedProvider,
    url: str,
    form: dict[str, str],
) -> dict[str, Any]:
    """`token_request` for any of the provider's OAuth endpoints that answer JSON (the token
    endpoint, the device authorization endpoint): the answer, or TokenEndpointError."""
    response, hidden = await authenticated_post(outbound, credentials, provider, url, form)
    target = describe_target("POST", url)
    try:
        body = json.loads(response.content) if response.content else None
    except ValueError:
        body = None
    if response.status >= 300 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        error = clean_text(error, hidden, 64)
        description = clean_text(
            body.get("error_description") if isinstance(body, dict) else None, hidden
        )
        if response.status < 300:
            raise BadUpstreamResponse(f"{target}: the answer is not a JSON object")
        said = f" {error}" + (f" ({description})" if description else "") if error else ""
        raise TokenEndpointError(
            f"{target} answered {response.status}{said}",
            upstream_status=response.status,
            error=error,
            description=description,
        )
    return body


async def authenticated_post(
    outbound: Outbound,
    credentials: ClientCredentials,
    provider: ResolvedProvider,
    url: str,
    form: dict[str, str],
) -> tuple[OutboundResponse, list[str]]:
    """POST `form` plus the client's authentication (a client assertion's `aud` is `url`) to
    one of the provider's endpoints through the egress guard (revocation answers no JSON, so
    it reads the response itself); the response, and the values sent, for blanking out of
    anything the provider echoes."""
    fields, basic = _authenticate(provider, credentials, url)
    hidden = [*form.values(), *fields.values(), credentials.client_secret or ""]
    response = await outbound.send(
        "POST",
        url,
        data={**form, **fields},
        auth=basic,
        headers={"Accept": "application/json"},
    )
    return response, hidden
