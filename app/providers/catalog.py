"""Well-known providers: what to fill in so that a user gives only the client id and secret.

Each `CatalogEntry` holds the provider's endpoints (or its issuer, whose discovery document
names them), default scopes, `authorize_params`, client authentication and PKCE, and its quirks:
how to get a refresh token at all, whether refresh tokens rotate, whether a refresh answer omits
the refresh token, and the reuse grace period. A placeholder such as `{tenant}` or `{domain}` in
a URL is filled from the provider's `catalog_params`. Nothing here is fetched: discovery happens
when the provider is used (`app/providers/discovery.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from string import Formatter
from typing import Any, Literal

from app.providers.resolve import ENDPOINT_FIELDS

ClientAuth = Literal["basic", "post", "private_key_jwt", "none"]
# Hosts, tenant ids and path segments only: a param can't add a path, query or another host.
CATALOG_PARAM_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
URL_FIELDS = ("issuer", *ENDPOINT_FIELDS)


@dataclass(frozen=True)
class Quirks:
    """What a user of the provider must know about its refresh tokens."""

    offline_access: str
    rotates: str
    refresh_answer_omits_refresh_token: bool
    reuse_grace: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CatalogEntry:
    """A well-known provider; URL templates may hold `{param}` placeholders."""

    name: str
    title: str
    description: str
    quirks: Quirks
    urls: dict[str, str] = field(default_factory=dict)
    scopes: tuple[str, ...] = ()
    authorize_params: dict[str, str] = field(default_factory=dict)
    client_auth: ClientAuth = "basic"
    pkce: bool = True
    refresh_token_reuse_grace_seconds: int = 0
    # Placeholder -> (what it is, its default or None when it must be given).
    params: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def placeholders(self, url_field: str) -> list[str]:
        """The `{param}` names a URL template uses."""
        template = self.urls.get(url_field, "")
        return [name for _, name, _, _ in Formatter().parse(template) if name]

    def fill(self, url_field: str, params: dict[str, str]) -> str | None:
        """The URL with its placeholders filled (every one must be in `params`)."""
        template = self.urls.get(url_field)
        return None if template is None else template.format(**params)


def check_catalog_param(value: str) -> str | None:
    """Why a catalog param can't be used, or None."""
    if re.fullmatch(CATALOG_PARAM_PATTERN, value) is None:
        return "must be a host name, tenant id or path segment (letters, digits, '.', '-')"
    return None


ENTRIES: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name="github",
        title="GitHub",
        description="GitHub Apps and OAuth apps (github.com). Plain OAuth 2.0, no OpenID Connect.",
        urls={
            "authorization_url": "https://github.com/login/oauth/authorize",
            "token_url": "https://github.com/login/oauth/access_token",
            "device_authorization_url": "https://github.com/login/device/code",
        },
        client_auth="post",
        quirks=Quirks(
            offline_access="Only GitHub Apps with expiring user tokens (the app setting "
            "'Expire user authorization tokens', on by default) get a refresh token; an OAuth "
            "app's token never expires and comes without one.",
            rotates="yes: every refresh answers a new refresh token (valid 6 months) and spends "
            "the old one; access tokens last 8 hours.",
            refresh_answer_omits_refresh_token=False,
            reuse_grace="none",
            notes=(
                "No OpenID Connect: no issuer, no ID token; give explicit URLs (filled in here).",
                "No RFC 7009 revocation endpoint (GitHub revokes through its REST API).",
                "A GitHub App's permissions are set on the app; scopes apply to OAuth apps.",
                "The token endpoint answers JSON only when asked (Accept: application/json), "
                "and answers its errors with HTTP 200 and an error field.",
            ),
        ),
    ),
    CatalogEntry(
        name="google",
        title="Google",
        description="Google accounts (OpenID Connect; endpoints from the issuer's discovery).",
        urls={"issuer": "https://accounts.google.com"},
        scopes=("openid", "email"),
        authorize_params={"access_type": "offline", "prompt": "consent"},
        client_auth="post",
        quirks=Quirks(
            offline_access="access_type=offline asks for a refresh token; prompt=consent makes "
            "Google answer one on every consent, not only the first (both filled in).",
            rotates="no: the refresh token stays the same until it is revoked.",
            refresh_answer_omits_refresh_token=True,
            reuse_grace="not needed (no rotation)",
            notes=(
                "Apps in 'Testing' publishing status get refresh tokens that expire after 7 days.",
            ),
        ),
    ),
    CatalogEntry(
        name="microsoft-entra-id",
        title="Microsoft Entra ID",
        description="Microsoft Entra ID (Azure AD) v2.0 endpoint of one tenant (OpenID Connect).",
        urls={"issuer": "https://login.microsoftonline.com/{tenant}/v2.0"},
        scopes=("openid", "offline_access"),
        client_auth="post",
        params={"tenant": ("the directory (tenant) id, a GUID", None)},
        quirks=Quirks(
            offline_access="The offline_access scope asks for a refresh token (filled in).",
            rotates="yes: every refresh answers a new refresh token; the old one stays valid "
            "until it expires (90 days; 24 hours for single-page apps).",
            refresh_answer_omits_refresh_token=False,
            reuse_grace="old refresh tokens keep working until they expire",
            notes=(
                "Give the tenant's id (GUID): the discovery document names its issuer with the "
                "id, so 'common', 'organizations' or a domain name fail the issuer check; for "
                "those, give explicit URLs instead of the issuer.",
                "Add the API's scopes (e.g. https://graph.microsoft.com/User.Read) to scopes.",
            ),
        ),
    ),
    CatalogEntry(
        name="slack",
        title="Slack",
        description="Slack apps (OAuth v2; explicit URLs).",
        urls={
            "authorization_url": "https://slack.com/oauth/v2/authorize",
            "token_url": "https://slack.com/api/oauth.v2.access",
        },
        client_auth="post",
        quirks=Quirks(
            offline_access="Refresh tokens exist only when token rotation is turned on in the "
            "app's settings (opt-in, and it can't be turned off again).",
            rotates="yes, once rotation is on: access tokens last 12 hours and each refresh "
            "answers a new refresh token.",
            refresh_answer_omits_refresh_token=False,
            reuse_grace="none",
            notes=(
                'Slack answers errors with HTTP 200 and {"ok": false, "error": ...}.',
                "Bot scopes go in scopes; user scopes need authorize_params user_scope.",
                "No RFC 7009 revocation endpoint (Slack's is auth.revoke).",
            ),
        ),
    ),
    CatalogEntry(
        name="salesforce",
        title="Salesforce",
        description="Salesforce connected apps, through login.salesforce.com or a My Domain.",
        urls={
            "authorization_url": "https://{domain}/services/oauth2/authorize",
            "token_url": "https://{domain}/services/oauth2/token",
            "revocation_url": "https://{domain}/services/oauth2/revoke",
        },
        scopes=("api", "refresh_token"),
        client_auth="post",
        params={
            "domain": (
                "login.salesforce.com, test.salesforce.com (sandboxes) or your My Domain "
                "(example.my.salesforce.com)",
                "login.salesforce.com",
            )
        },
        quirks=Quirks(
            offline_access="The refresh_token (or offline_access) scope asks for a refresh "
            "token (filled in); the connected app's refresh token policy decides how long it "
            "lasts.",
            rotates="no by default (rotation can be turned on for the app).",
            refresh_answer_omits_refresh_token=True,
            reuse_grace="not needed unless rotation is on",
            notes=("The token answer's instance_url is the base URL of the org's API.",),
        ),
    ),
    CatalogEntry(
        name="okta",
        title="Okta",
        description="An Okta custom authorization server (OpenID Connect, by issuer).",
        urls={"issuer": "https://{domain}/oauth2/{authorization_server}"},
        scopes=("openid", "offline_access"),
        client_auth="basic",
        refresh_token_reuse_grace_seconds=30,
        params={
            "domain": ("your Okta domain (example.okta.com)", None),
            "authorization_server": ("the authorization server id", "default"),
        },
        quirks=Quirks(
            offline_access="The offline_access scope, and the Refresh Token grant type allowed "
            "for the app.",
            rotates="configurable: 'Rotate token after every use' (the default for new apps) or "
            "a persistent refresh token.",
            refresh_answer_omits_refresh_token=False,
            reuse_grace="with rotation, a grace period of 0-60 seconds (default 30): set "
            "refresh_token_reuse_grace_seconds to match.",
        ),
    ),
    CatalogEntry(
        name="auth0",
        title="Auth0",
        description="An Auth0 tenant (OpenID Connect, by issuer; note the issuer's final '/').",
        urls={"issuer": "https://{domain}/"},
        scopes=("openid", "offline_access"),
        client_auth="post",
        params={"domain": ("your tenant's domain (example.eu.auth0.com) or custom domain", None)},
        quirks=Quirks(
            offline_access="The offline_access scope, and 'Allow Offline Access' on the API "
            "(add authorize_params audience for an API's access token).",
            rotates="configurable: refresh token rotation per application (off: the same "
            "refresh token until it expires or is revoked).",
            refresh_answer_omits_refresh_token=False,
            reuse_grace="with rotation, the application's 'Reuse Interval' (default 0 seconds): "
            "set refresh_token_reuse_grace_seconds to match.",
        ),
    ),
)
CATALOG: dict[str, CatalogEntry] = {entry.name: entry for entry in ENTRIES}
CatalogName = Literal[
    "github", "google", "microsoft-entra-id", "slack", "salesforce", "okta", "auth0"
]


def describe_entry(entry: CatalogEntry) -> dict[str, Any]:
    """An entry as `GET /v1/providers/catalog` shows it."""
    return {
        "name": entry.name,
        "title": entry.title,
        "description": entry.description,
        **{key: entry.urls.get(key) for key in URL_FIELDS},
        "scopes": list(entry.scopes),
        "authorize_params": dict(entry.authorize_params),
        "client_auth": entry.client_auth,
        "pkce": entry.pkce,
        "refresh_token_reuse_grace_seconds": entry.refresh_token_reuse_grace_seconds,
        "params": {
            name: {"description": what, "default": default}
            for name, (what, default) in entry.params.items()
        },
        "quirks": {
            "offline_access": entry.quirks.offline_access,
            "rotates": entry.quirks.rotates,
            "refresh_answer_omits_refresh_token": entry.quirks.refresh_answer_omits_refresh_token,
            "reuse_grace": entry.quirks.reuse_grace,
            "notes": list(entry.quirks.notes),
        },
    }
