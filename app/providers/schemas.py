"""Request and response models of providers.

A field left out (null) is filled from the `catalog` entry when one is named, else from the
default; what is stored and shown is always the filled-in provider. `PUT` replaces a provider
with the body, filled the same way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.presets.catalog import TokenUrl
from app.providers.catalog import CATALOG_PARAM_PATTERN, CatalogName, ClientAuth
from app.schemas import StrictModel
from app.secrets.schemas import SecretName
from app.text import Description, no_nul

PROVIDER_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_PATTERN = r"^[\x21\x23-\x5B\x5D-\x7E]{1,200}$"
AUTHORIZE_PARAM_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_GRACE_SECONDS = 3600
# Parameters of the authorization request that tokenfarm sets itself, and where they come from.
RESERVED_AUTHORIZE_PARAMS = {
    "response_type": "tokenfarm sets it (code)",
    "client_id": "tokenfarm sends the value of client_id_secret",
    "redirect_uri": "tokenfarm sends {TOKENFARM_PUBLIC_URL}/connect/callback",
    "state": "tokenfarm makes a fresh one per flow",
    "code_challenge": "tokenfarm makes a fresh PKCE challenge per flow (see pkce)",
    "code_challenge_method": "tokenfarm uses S256 (see pkce)",
    "nonce": "tokenfarm makes a fresh one per flow",
    "scope": "give scopes in the scopes field",
}
EXAMPLE: dict[str, Any] = {
    "name": "google",
    "catalog": "google",
    "client_id_secret": "GOOGLE_CLIENT_ID",
    "client_secret_secret": "GOOGLE_CLIENT_SECRET",
}


def _issuer(url: str) -> str:
    """An issuer identifier: an http(s) URL without query or fragment (RFC 8414 §2)."""
    if urlsplit(url).query:
        raise ValueError("an issuer has no query string (RFC 8414 §2)")
    return url


def _authorize_params(params: dict[str, str]) -> dict[str, str]:
    """Extra authorization request parameters, none of those tokenfarm sets itself."""
    for key, value in params.items():
        if key in RESERVED_AUTHORIZE_PARAMS:
            raise ValueError(f"{key!r} can't be set here: {RESERVED_AUTHORIZE_PARAMS[key]}")
        no_nul(value)
    return params


ProviderName = Annotated[str, Field(pattern=PROVIDER_NAME_PATTERN, examples=["google"])]
Issuer = Annotated[
    TokenUrl,
    AfterValidator(_issuer),
    Field(
        description="OpenID Connect / RFC 8414 issuer: its discovery document fills every "
        "endpoint not given explicitly, and must name exactly this issuer.",
        examples=["https://accounts.google.com"],
    ),
]
Scope = Annotated[str, Field(pattern=SCOPE_PATTERN, examples=["openid"])]
AuthorizeParams = Annotated[
    dict[
        Annotated[str, Field(pattern=AUTHORIZE_PARAM_PATTERN)],
        Annotated[str, Field(max_length=2000)],
    ],
    Field(max_length=50),
    AfterValidator(_authorize_params),
]
CatalogParam = Annotated[str, Field(pattern=CATALOG_PARAM_PATTERN)]


class ProviderFields(StrictModel):
    """Everything about a provider but its name; null fields come from the catalog or defaults."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})

    description: Description | None = None
    catalog: CatalogName | None = Field(
        None, description="A well-known provider (GET /v1/providers/catalog) to fill in from."
    )
    catalog_params: dict[Annotated[str, Field(max_length=64)], CatalogParam] = Field(
        default_factory=dict,
        description='Values of the catalog entry\'s placeholders, e.g. {"tenant": "…"}.',
    )
    issuer: Issuer | None = None
    authorization_url: TokenUrl | None = None
    token_url: TokenUrl | None = None
    revocation_url: TokenUrl | None = None
    device_authorization_url: TokenUrl | None = None
    jwks_uri: TokenUrl | None = None
    client_auth: ClientAuth | None = Field(
        None,
        description="`basic` (client_secret_basic, the default), `post` (client_secret_post), "
        "`private_key_jwt` (RFC 7523 assertion), `none` (a public client).",
    )
    client_id_secret: SecretName | None = Field(
        None, description="The secret holding the client id."
    )
    client_secret_secret: SecretName | None = Field(
        None, description="The secret holding the client secret (basic and post)."
    )
    private_key_secret: SecretName | None = Field(
        None, description="The secret holding the PEM private key (private_key_jwt)."
    )
    scopes: list[Scope] | None = Field(None, max_length=100, description="Default scopes.")
    authorize_params: AuthorizeParams | None = Field(
        None,
        description="Extra parameters of the authorization request, e.g. access_type: offline.",
    )
    pkce: bool | None = Field(None, description="PKCE S256 (default on).")
    refresh_token_reuse_grace_seconds: int | None = Field(
        None,
        ge=0,
        le=MAX_GRACE_SECONDS,
        description="How long the provider still accepts a spent refresh token (0: not at all).",
    )


class ProviderCreate(ProviderFields):
    """A new provider."""

    name: ProviderName


class ProviderUpdate(ProviderFields):
    """A provider's new definition (PUT replaces it; null fields are filled as on create)."""


class ProviderRead(BaseModel):
    """A provider as stored (catalog values filled in), without any credential."""

    name: str
    description: str
    catalog: str | None
    issuer: str | None
    authorization_url: str | None
    token_url: str | None
    revocation_url: str | None
    device_authorization_url: str | None
    jwks_uri: str | None
    client_auth: str
    client_id_secret: str | None
    client_secret_secret: str | None
    private_key_secret: str | None
    scopes: list[str]
    authorize_params: dict[str, Any]
    pkce: bool
    refresh_token_reuse_grace_seconds: int
    warnings: list[str] = Field(description="What works but is not advised (e.g. pkce off).")
    created_at: datetime
    updated_at: datetime


class ResolvedEndpoints(BaseModel):
    """A provider's endpoints as the connect flow uses them (discovery done)."""

    name: str
    issuer: str | None
    authorization_url: str | None
    token_url: str | None
    revocation_url: str | None
    device_authorization_url: str | None
    jwks_uri: str | None


class CatalogParamRead(BaseModel):
    """A placeholder of a catalog entry's URLs, given in `catalog_params`."""

    description: str
    default: str | None = Field(description="Used when not given; null: it must be given.")


class QuirksRead(BaseModel):
    """What to know about a provider's refresh tokens."""

    offline_access: str = Field(description="How to get a refresh token at all.")
    rotates: str = Field(description="Whether a refresh answers a new refresh token.")
    refresh_answer_omits_refresh_token: bool = Field(
        description="A refresh answer carries no refresh_token (the stored one stays)."
    )
    reuse_grace: str = Field(description="Whether a spent refresh token still works, how long.")
    notes: list[str]


class CatalogEntryRead(BaseModel):
    """A well-known provider: what `catalog: NAME` fills in, and its quirks."""

    name: str
    title: str
    description: str
    issuer: str | None
    authorization_url: str | None
    token_url: str | None
    revocation_url: str | None
    device_authorization_url: str | None
    jwks_uri: str | None
    scopes: list[str]
    authorize_params: dict[str, str]
    client_auth: str
    pkce: bool
    refresh_token_reuse_grace_seconds: int
    params: dict[str, CatalogParamRead]
    quirks: QuirksRead
