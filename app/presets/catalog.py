"""The presets: each turns a few parameters into an ordinary, editable action.

A preset is a strategy in `PRESETS` sharing the `Preset` protocol: a pydantic model of its params
(its JSON schema is what `GET /v1/presets` shows) and `expand`, which writes the action. Params
name secrets, never hold their values: the action reads them through `{{ secrets.NAME }}`.
Every request is a real RFC 6749 / RFC 7523 one, form-encoded.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.pipeline.rotation import REUSE_GRACE_RETRY
from app.pipeline.schemas import SECRET_FIELD_PATTERN, SECRET_NAME_PATTERN
from app.text import no_nul

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Assertions are signed just before they are sent: a short life is all they need.
ASSERTION_LIFETIME_SECONDS = 300
ENTRA_AUTHORITY = "login.microsoftonline.com"
ENTRA_DEFAULT_SCOPE = "https://graph.microsoft.com/.default"
AUTHORITY_HOST_PATTERN = r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$"
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.-]{0,254}$"


def _literal(text: str) -> str:
    """Refuse text the action would read as a binding: params are values, never paths."""
    if "{{" in text or "}}" in text:
        raise ValueError("must be plain text: '{{' and '}}' would be read as a binding")
    return no_nul(text)


def _http_url(url: str) -> str:
    """An absolute http(s) URL with a host, no fragment."""
    _literal(url)
    try:
        parts = urlsplit(url)
        _ = parts.port  # parsing it is the check
    except ValueError:
        raise ValueError("must be an absolute http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or url != url.strip():
        raise ValueError("must be an absolute http:// or https:// URL")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    return url


def _authority(value: str) -> str:
    """A host (`login.microsoftonline.us`) or a base URL (`http://127.0.0.1:8765`)."""
    if "://" in value:
        _http_url(value)
        parts = urlsplit(value)
        if parts.path.strip("/") or parts.query:
            raise ValueError("a base URL without a path, e.g. https://login.microsoftonline.com")
    elif not re.fullmatch(AUTHORITY_HOST_PATTERN, value):
        raise ValueError("a host name (e.g. login.microsoftonline.com) or a base URL")
    return value


def authority_url(authority: str) -> str:
    """The base URL of an authority: `https://` unless it names its scheme."""
    if "://" in authority:
        parts = urlsplit(authority)
        return f"{parts.scheme}://{parts.netloc}"
    return f"https://{authority}"


SecretName = Annotated[
    str, Field(pattern=SECRET_NAME_PATTERN, description="The name of an existing secret.")
]
Text = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_literal)]
TokenUrl = Annotated[
    str,
    Field(max_length=2000, examples=["https://auth.example.com/oauth/token"]),
    AfterValidator(_http_url),
]
ClientAuth = Literal["basic", "post", "private_key_jwt", "none"]


class PresetParams(BaseModel):
    """Base of every preset's params: unknown params are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid")

    def problems(self) -> list[tuple[str, str]]:
        """(param, message) for rules that tie params together; empty when all is well."""
        return []

    def secret_params(self) -> dict[str, str]:
        """param -> secret name, for every param that names a secret."""
        return {
            name: value
            for name, value in self
            if name.endswith("_secret") and isinstance(value, str)
        }


class ClientAuthParams(PresetParams):
    """How the client authenticates at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2)."""

    token_url: TokenUrl
    client_id_secret: SecretName = Field(description="The secret holding the client_id.")
    client_auth: ClientAuth = Field(
        "basic",
        description="`basic`: HTTP Basic (client_secret_basic); `post`: client_id and "
        "client_secret in the form; `private_key_jwt`: a signed client assertion (RFC 7523); "
        "`none`: a public client, only client_id in the form.",
    )
    client_secret_secret: SecretName | None = Field(
        None, description="The secret holding the client_secret (for `basic` and `post`)."
    )
    private_key_secret: SecretName | None = Field(
        None, description="The secret holding the PEM private key (for `private_key_jwt`)."
    )
    private_key_field: str | None = Field(
        None,
        pattern=SECRET_FIELD_PATTERN,
        description="The field of a JSON private_key_secret that holds the key.",
    )
    key_id: Text | None = Field(None, description="`kid` of the client's key, if it has one.")
    key_algorithm: Literal["RS256", "ES256"] = Field(
        "RS256", description="How the client assertion is signed."
    )
    scope: Text | None = None

    def problems(self) -> list[tuple[str, str]]:
        """A client secret for `basic`/`post`, a private key for `private_key_jwt`."""
        found = []
        if self.client_auth == "private_key_jwt":
            if self.private_key_secret is None:
                found.append(("private_key_secret", "client_auth private_key_jwt needs it"))
            if self.client_secret_secret is not None:
                found.append(("client_secret_secret", "private_key_jwt sends no client secret"))
        elif self.client_auth == "none":
            for name in ("client_secret_secret", "private_key_secret", "private_key_field"):
                if getattr(self, name) is not None:
                    found.append((name, "a public client (client_auth none) sends no secret"))
        else:
            if self.client_secret_secret is None:
                found.append(("client_secret_secret", f"client_auth {self.client_auth} needs it"))
            for name in ("private_key_secret", "private_key_field", "key_id"):
                if getattr(self, name) is not None:
                    found.append((name, "goes with client_auth private_key_jwt only"))
        return found


class RefreshTokenParams(ClientAuthParams):
    """The refresh_token grant (RFC 6749 §6)."""

    refresh_token_secret: SecretName = Field(
        description="The secret holding the refresh token; a rotated one is written back."
    )
    reuse_grace: bool = Field(
        False,
        description="The token server accepts a spent refresh token again for a grace period: "
        "only then is a refresh whose answer was lost retried with the same refresh token "
        "(otherwise it is never retried, see the action language's retries).",
    )


class ClientCredentialsParams(ClientAuthParams):
    """The client_credentials grant (RFC 6749 §4.4)."""

    audience: Text | None = Field(None, description="Sent as `audience` (Auth0 and others).")
    resource: TokenUrl | None = Field(None, description="Sent as `resource` (RFC 8707).")


class JwtBearerParams(PresetParams):
    """The JWT-bearer grant (RFC 7523 §2.1) with a Google service-account key file."""

    service_account_secret: SecretName = Field(
        description="The secret holding the service account's JSON key file "
        "(client_email, private_key, private_key_id, token_uri)."
    )
    scope: Text = Field(examples=["https://www.googleapis.com/auth/cloud-platform"])
    subject: Text | None = Field(
        None, description="The user to act as (domain-wide delegation); sent as `sub`."
    )
    token_url: TokenUrl | None = Field(None, description="Default: the key file's `token_uri`.")


class EntraParams(PresetParams):
    """Microsoft Entra ID client credentials (v2.0 endpoint, client secret in the form)."""

    tenant_id: str = Field(
        pattern=TENANT_PATTERN, description="The directory (tenant) id or a verified domain."
    )
    client_id_secret: SecretName = Field(description="The secret holding the application id.")
    client_secret_secret: SecretName = Field(description="The secret holding the client secret.")
    scope: Text = ENTRA_DEFAULT_SCOPE
    authority: Annotated[str, Field(max_length=300), AfterValidator(_authority)] = Field(
        ENTRA_AUTHORITY,
        description="The login host (login.microsoftonline.us for US Government) or a base URL.",
    )


# --- building blocks of the actions -----------------------------------------------------------


def secret(name: str, field: str | None = None) -> str:
    """The binding that reads a secret (or a field of a JSON secret)."""
    return f"{{{{ secrets.{name}.{field} }}}}" if field else f"{{{{ secrets.{name} }}}}"


def _reset(*names: str) -> dict[str, Any]:
    """Start from nothing, so nothing of an earlier run can be written by mistake."""
    return {"type": "update_object", "values": dict.fromkeys(names)}


def _client_authentication(
    params: ClientAuthParams,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, str]]:
    """(nodes to run first, the request's `auth`, form fields) for the params' client_auth."""
    client_id = secret(params.client_id_secret)
    if params.client_auth == "basic":
        assert params.client_secret_secret is not None
        auth = {
            "type": "basic",
            "username": client_id,
            "password": secret(params.client_secret_secret),
        }
        return [], auth, {}
    if params.client_auth == "none":
        return [], None, {"client_id": client_id}
    if params.client_auth == "post":
        assert params.client_secret_secret is not None
        return (
            [],
            None,
            {"client_id": client_id, "client_secret": secret(params.client_secret_secret)},
        )
    assert params.private_key_secret is not None
    sign: dict[str, Any] = {
        "type": "sign_jwt",
        "label": "client assertion (private_key_jwt, RFC 7523 §2.2)",
        "algorithm": params.key_algorithm,
        "key_secret": params.private_key_secret,
    }
    if params.private_key_field:
        sign["key_field"] = params.private_key_field
    if params.key_id:
        sign["header"] = {"kid": params.key_id}
    sign |= {
        "claims": {"iss": client_id, "sub": client_id, "aud": params.token_url},
        "expires_in_seconds": ASSERTION_LIFETIME_SECONDS,
        "into": "client_assertion",
    }
    form = {
        "client_id": client_id,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": "{{ vars.client_assertion }}",
    }
    return [sign], None, form


def _token_request(
    label: str,
    url: str,
    form: dict[str, Any],
    mapping: dict[str, str],
    auth: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A form-encoded POST to the token endpoint, mapping its answer into variables."""
    node: dict[str, Any] = {
        "type": "web_request",
        "label": label,
        "method": "POST",
        "url": url,
        "headers": {"Accept": "application/json"},
    }
    if auth is not None:
        node["auth"] = auth
    node["body"] = {"form": form}
    node["result_mapping"] = mapping
    return node


def _store(target: str, refresh_token_secret: str | None = None) -> dict[str, Any]:
    """Write the access token; a new refresh token only when one came back (never erase it)."""
    then: list[dict[str, Any]] = [
        {
            "type": "update_secret",
            "secret": target,
            "value": "{{ vars.token }}",
            "expires_in": "{{ vars.ttl }}",
        }
    ]
    if refresh_token_secret is not None:
        then.append(
            {
                "type": "if",
                "condition": {"op": "has_value", "left": "{{ vars.refresh }}"},
                "then": [
                    {
                        "type": "update_secret",
                        "secret": refresh_token_secret,
                        "value": "{{ vars.refresh }}",
                    }
                ],
            }
        )
    return {
        "type": "if",
        "condition": {"op": "has_value", "left": "{{ vars.token }}"},
        "then": then,
        "else": [
            {
                "type": "throw",
                "status": 502,
                "message": "the token endpoint answered without an access_token",
            }
        ],
    }


TOKEN_MAPPING = {"token": "$.access_token", "ttl": "$.expires_in"}


def _optional(**fields: str | None) -> dict[str, str]:
    """Form fields that were given (an absent scope is left out, not sent empty)."""
    return {name: value for name, value in fields.items() if value is not None}


# --- the presets ------------------------------------------------------------------------------


class Preset(Protocol):
    """What every preset offers: a name, a description, its params, and the action it writes."""

    name: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[type[PresetParams]]

    def expand(self, params: Any, target: str) -> list[dict[str, Any]]:
        """The action that refreshes `target` with these (validated) params."""
        ...


class OAuth2RefreshToken:
    """The refresh_token grant, rotating the refresh token when the server sends a new one."""

    name: ClassVar[str] = "oauth2_refresh_token"
    description: ClassVar[str] = (
        "OAuth 2.0 refresh_token grant (RFC 6749 §6): trades the refresh token for an access "
        "token, writes it with its expiry, and stores a rotated refresh token when one comes back."
    )
    params: ClassVar[type[PresetParams]] = RefreshTokenParams

    def expand(self, params: RefreshTokenParams, target: str) -> list[dict[str, Any]]:
        """The canonical refresh (docs/first-refresh.md) for these params."""
        first, auth, client_fields = _client_authentication(params)
        form = {
            "grant_type": "refresh_token",
            "refresh_token": secret(params.refresh_token_secret),
            **_optional(scope=params.scope),
            **client_fields,
        }
        mapping = {**TOKEN_MAPPING, "refresh": "$.refresh_token"}
        request = _token_request("refresh_token grant", params.token_url, form, mapping, auth)
        if params.reuse_grace:
            request["retry"] = dict(REUSE_GRACE_RETRY)
        return [
            _reset("token", "refresh", "ttl"),
            *first,
            request,
            _store(target, params.refresh_token_secret),
        ]


class OAuth2ClientCredentials:
    """The client_credentials grant."""

    name: ClassVar[str] = "oauth2_client_credentials"
    description: ClassVar[str] = (
        "OAuth 2.0 client_credentials grant (RFC 6749 §4.4): the client's own access token, "
        "optionally for an audience or resource (RFC 8707)."
    )
    params: ClassVar[type[PresetParams]] = ClientCredentialsParams

    def expand(self, params: ClientCredentialsParams, target: str) -> list[dict[str, Any]]:
        """A client_credentials request and the write of its token."""
        first, auth, client_fields = _client_authentication(params)
        form = {
            "grant_type": "client_credentials",
            **_optional(scope=params.scope, audience=params.audience, resource=params.resource),
            **client_fields,
        }
        return [
            _reset("token", "ttl"),
            *first,
            _token_request("client_credentials grant", params.token_url, form, TOKEN_MAPPING, auth),
            _store(target),
        ]


class OAuth2JwtBearer:
    """The JWT-bearer grant with a service-account key file (Google)."""

    name: ClassVar[str] = "oauth2_jwt_bearer"
    description: ClassVar[str] = (
        "OAuth 2.0 JWT-bearer grant (RFC 7523 §2.1) for Google service accounts: signs an "
        "RS256 assertion with the key file's private_key (iss client_email, aud token url, "
        "scope, sub for delegation) and trades it for an access token."
    )
    params: ClassVar[type[PresetParams]] = JwtBearerParams

    def expand(self, params: JwtBearerParams, target: str) -> list[dict[str, Any]]:
        """Sign the assertion, send it, write the token."""
        key = params.service_account_secret
        token_url = params.token_url or secret(key, "token_uri")
        claims = {"iss": secret(key, "client_email"), "scope": params.scope, "aud": token_url}
        if params.subject is not None:
            claims["sub"] = params.subject
        sign = {
            "type": "sign_jwt",
            "label": "assertion (RFC 7523 §2.1)",
            "algorithm": "RS256",
            "key_secret": key,
            "key_field": "private_key",
            "header": {"kid": secret(key, "private_key_id")},
            "claims": claims,
            "expires_in_seconds": ASSERTION_LIFETIME_SECONDS,
            "into": "assertion",
        }
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": "{{ vars.assertion }}"}
        return [
            _reset("token", "ttl"),
            sign,
            _token_request("jwt-bearer grant", token_url, form, TOKEN_MAPPING),
            _store(target),
        ]


class EntraIdClientCredentials:
    """Microsoft Entra ID (Azure AD) client credentials on the v2.0 endpoint."""

    name: ClassVar[str] = "entra_id_client_credentials"
    description: ClassVar[str] = (
        "Microsoft Entra ID client credentials: POST https://{authority}/{tenant_id}/oauth2/"
        "v2.0/token with the client secret and a `.default` scope."
    )
    params: ClassVar[type[PresetParams]] = EntraParams

    @staticmethod
    def token_url(params: EntraParams) -> str:
        """The tenant's v2.0 token endpoint."""
        return f"{authority_url(params.authority)}/{params.tenant_id}/oauth2/v2.0/token"

    def expand(self, params: EntraParams, target: str) -> list[dict[str, Any]]:
        """A client_credentials request with the secret in the form, as Entra documents it."""
        form = {
            "grant_type": "client_credentials",
            "client_id": secret(params.client_id_secret),
            "client_secret": secret(params.client_secret_secret),
            "scope": params.scope,
        }
        url = self.token_url(params)
        return [
            _reset("token", "ttl"),
            _token_request("Entra ID client credentials", url, form, TOKEN_MAPPING),
            _store(target),
        ]


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        OAuth2RefreshToken(),
        OAuth2ClientCredentials(),
        OAuth2JwtBearer(),
        EntraIdClientCredentials(),
    )
}
