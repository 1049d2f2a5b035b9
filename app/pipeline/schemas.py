"""Node and condition models: an action is a list of nodes in a discriminated union on `type`.

These models are validated when an endpoint is saved, so a bad action is refused with the path of
the offending node before it can ever run.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, model_validator

from app.errors import CATCHABLE_KINDS

SECRET_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,127}$"  # noqa: S105 - a pattern, not a secret
VARIABLE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# RFC 9110 §5.6.2 token: what an HTTP header name may be made of.
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$"
ErrorKind = Literal["upstream_error", "timeout", "network", "bad_response", "binding", "thrown"]
assert set(CATCHABLE_KINDS) == set(ErrorKind.__args__)  # type: ignore[attr-defined]


class Strict(BaseModel):
    """Base of the action models: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- conditions -------------------------------------------------------------------------------

ComparisonOp = Literal[
    "has_value", "equals", "not_equals", "lt", "lte", "gt", "gte", "in", "not_in"
]


class Comparison(Strict):
    """`{"op", "left", "right"}`; `has_value` takes only `left`."""

    op: ComparisonOp
    left: Any = None
    right: Any = None

    @model_validator(mode="after")
    def _operands(self) -> Comparison:
        # Operands may be null on purpose, so "given" means present in the input.
        if "left" not in self.model_fields_set:
            raise ValueError(f"'{self.op}' needs 'left'")
        if self.op == "has_value" and "right" in self.model_fields_set:
            raise ValueError("'has_value' takes only 'left'")
        if self.op != "has_value" and "right" not in self.model_fields_set:
            raise ValueError(f"'{self.op}' needs 'right'")
        return self


class AllOf(Strict):
    """True when every condition is."""

    all: list[Condition] = Field(min_length=1)


class AnyOf(Strict):
    """True when at least one condition is."""

    any: list[Condition] = Field(min_length=1)


class NotOf(Strict):
    """True when the condition is false."""

    not_: Condition = Field(alias="not")


def _condition_tag(value: Any) -> str | None:
    """Which condition model a raw dict is, by the key it carries."""
    if isinstance(value, BaseModel):
        return {Comparison: "comparison", AllOf: "all", AnyOf: "any", NotOf: "not"}.get(type(value))
    if isinstance(value, dict):
        for key in ("op", "all", "any", "not"):
            if key in value:
                return "comparison" if key == "op" else key
    return None


Condition = Annotated[
    Annotated[Comparison, Tag("comparison")]
    | Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[NotOf, Tag("not")],
    Discriminator(
        _condition_tag,
        custom_error_type="invalid_condition",
        custom_error_message='a condition is {"op", "left", "right"}, {"all": [...]}, '
        '{"any": [...]} or {"not": {...}}',
    ),
]


# --- web_request parts ------------------------------------------------------------------------


class BasicAuth(Strict):
    """HTTP Basic authentication."""

    type: Literal["basic"]
    username: str
    password: str


class BearerAuth(Strict):
    """`Authorization: Bearer <token>`."""

    type: Literal["bearer"]
    token: str


class RequestBody(Strict):
    """Exactly one of `form`, `json` or `raw` (with `content_type`)."""

    form: dict[str, Any] | None = None
    json_: Any = Field(None, alias="json")
    raw: str | None = None
    content_type: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> RequestBody:
        given = [k for k in ("form", "json_", "raw") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("body needs exactly one of 'form', 'json' or 'raw'")
        if self.raw is None and self.content_type is not None:
            raise ValueError("'content_type' goes with a 'raw' body only")
        return self


class RetryPolicy(Strict):
    """How a `web_request` retries transient (5xx, 408, network, timeout) and rate-limited (429)
    failures: exponential backoff with jitter, honouring `Retry-After` up to `max_delay_seconds`.
    Permanent failures (other 4xx, OAuth errors such as `invalid_grant`) are never retried."""

    attempts: int = Field(3, ge=1, le=10, description="Attempts in all; 1 turns retrying off.")
    base_delay_seconds: float = Field(
        0.5, ge=0, le=60, description="Delay before the first retry; doubles each retry."
    )
    max_delay_seconds: float = Field(
        30, ge=0, le=300, description="Cap on any one delay, Retry-After included."
    )


# --- nodes ------------------------------------------------------------------------------------


class NodeBase(Strict):
    """Fields every node may carry."""

    label: str | None = Field(None, max_length=200, description="Shown in the run trace.")


class UpdateObjectNode(NodeBase):
    """Sets service variables: `{"values": {"token": null}}`."""

    type: Literal["update_object"]
    values: dict[Annotated[str, Field(pattern=VARIABLE_NAME_PATTERN)], Any] = Field(min_length=1)


class WebRequestNode(NodeBase):
    """Calls an HTTP API and maps fields of its JSON answer into variables."""

    type: Literal["web_request"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str = Field(min_length=1, max_length=2000)
    query: dict[str, Any] = Field(default_factory=dict)
    headers: dict[Annotated[str, Field(pattern=HEADER_NAME_PATTERN)], str] = Field(
        default_factory=dict
    )
    auth: Annotated[BasicAuth | BearerAuth, Field(discriminator="type")] | None = None
    body: RequestBody | None = None
    timeout_seconds: float | None = Field(None, gt=0, le=300)
    accept_statuses: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=list, description="Statuses besides 2xx that count as success."
    )
    result_mapping: dict[Annotated[str, Field(pattern=VARIABLE_NAME_PATTERN)], str] = Field(
        default_factory=dict, description="variable -> JSONPath into the response body"
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    follow_redirects: bool = Field(
        False, description="Follow 3xx redirects (each hop passes the egress guard)."
    )


class IfNode(NodeBase):
    """Runs `then` when the condition holds, else `else`."""

    type: Literal["if"]
    condition: Condition
    then: list[Node] = Field(default_factory=list)
    else_: list[Node] = Field(default_factory=list, alias="else")


class UpdateSecretNode(NodeBase):
    """Writes a secret (at the end of a successful run, compare-and-set on its version)."""

    type: Literal["update_secret"]
    secret: str = Field(pattern=SECRET_NAME_PATTERN)
    value: Any
    expires_in: Any = Field(None, description="Seconds from now, or a binding to them.")
    expires_at: Any = Field(None, description="An ISO 8601 time or epoch seconds.")
    allow_empty: bool = False

    @model_validator(mode="after")
    def _one_expiry(self) -> UpdateSecretNode:
        if self.expires_in is not None and self.expires_at is not None:
            raise ValueError("give 'expires_in' or 'expires_at', not both")
        return self


class TryNode(NodeBase):
    """Runs `do`; on an error of the listed kinds (default: any) runs `catch`."""

    type: Literal["try"]
    do: list[Node] = Field(min_length=1)
    catch: list[Node] = Field(default_factory=list)
    errors: list[ErrorKind] | None = Field(
        None, min_length=1, description="Kinds of error to catch; absent catches every kind."
    )


class ThrowNode(NodeBase):
    """Fails the run with a status and message."""

    type: Literal["throw"]
    status: int = Field(400, ge=400, le=599)
    message: str = Field(min_length=1, max_length=1000)


class EndExecutionNode(NodeBase):
    """Ends the run successfully; `response` becomes the run's response."""

    type: Literal["end_execution"]
    response: Any = None


class LogNode(NodeBase):
    """Adds a message to the run trace (secret values redacted)."""

    type: Literal["log"]
    message: str = Field(min_length=1, max_length=2000)
    level: Literal["debug", "info", "warning", "error"] = "info"


JwtAlgorithm = Literal["RS256", "ES256", "HS256"]
# JOSE header parameter names (RFC 7515 §4): `kid`, `typ`, `x5t#S256`, ...
JWT_HEADER_NAME_PATTERN = r"^[A-Za-z0-9_.#:-]{1,64}$"
# A field of a JSON secret (`private_key` of a Google service-account key file).
SECRET_FIELD_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"  # noqa: S105 - a pattern, not a secret


class SignJwtNode(NodeBase):
    """Signs a JWT with a key from a secret into a variable (RFC 7523: the JWT-bearer grant and
    `private_key_jwt` client authentication). `iat`, `exp` and `jti` are filled in unless the
    claims give them; a claim or header value that renders to null is left out."""

    type: Literal["sign_jwt"]
    algorithm: JwtAlgorithm
    key_secret: str = Field(
        pattern=SECRET_NAME_PATTERN,
        description="The secret holding the key: a PEM private key (RS256, ES256 on P-256) "
        "or a shared secret of 32+ bytes (HS256).",
    )
    key_field: str | None = Field(
        None,
        pattern=SECRET_FIELD_PATTERN,
        description="The field of a JSON secret that holds the key (e.g. `private_key`).",
    )
    header: dict[Annotated[str, Field(pattern=JWT_HEADER_NAME_PATTERN)], Any] = Field(
        default_factory=dict, description="Extra header parameters, e.g. `kid`; not `alg`."
    )
    claims: dict[Annotated[str, Field(min_length=1, max_length=256)], Any] = Field(
        default_factory=dict
    )
    expires_in_seconds: int = Field(
        300, ge=1, le=86400, description="`exp` is this many seconds from now (unless given)."
    )
    into: str = Field(pattern=VARIABLE_NAME_PATTERN, description="The variable that gets the JWT.")

    @model_validator(mode="after")
    def _algorithm_is_the_nodes(self) -> SignJwtNode:
        if "alg" in self.header:
            raise ValueError("the header's 'alg' comes from 'algorithm'; leave it out")
        return self


Node = Annotated[
    UpdateObjectNode
    | WebRequestNode
    | IfNode
    | UpdateSecretNode
    | TryNode
    | ThrowNode
    | EndExecutionNode
    | LogNode
    | SignJwtNode,
    Field(discriminator="type"),
]

NODE_TYPES = (
    "update_object",
    "web_request",
    "if",
    "update_secret",
    "try",
    "throw",
    "end_execution",
    "log",
    "sign_jwt",
)

for _model in (AllOf, AnyOf, NotOf, IfNode, TryNode):
    _model.model_rebuild()

Action = list[Node]
ACTION_ADAPTER: TypeAdapter[list[Any]] = TypeAdapter(Action)


def parse_action(raw: list[dict[str, Any]]) -> list[Any]:
    """Stored action JSON -> node models (already validated when saved)."""
    return ACTION_ADAPTER.validate_python(raw)


def dump_action(nodes: list[Any]) -> list[dict[str, Any]]:
    """Node models -> JSON as the user wrote it (aliases, no unset defaults)."""
    return ACTION_ADAPTER.dump_python(nodes, by_alias=True, exclude_unset=True, mode="json")


CANONICAL_ACTION_EXAMPLE: list[dict[str, Any]] = [
    {"type": "update_object", "values": {"token": None}},
    {
        "type": "web_request",
        "method": "POST",
        "url": "https://auth.example.com/oauth/token",
        "auth": {
            "type": "basic",
            "username": "{{ secrets.CLIENT_ID }}",
            "password": "{{ secrets.CLIENT_SECRET }}",
        },
        "body": {
            "form": {"grant_type": "refresh_token", "refresh_token": "{{ secrets.REFRESH_TOKEN }}"}
        },
        "result_mapping": {
            "token": "$.access_token",
            "refresh": "$.refresh_token",
            "ttl": "$.expires_in",
        },
    },
    {
        "type": "if",
        "condition": {"op": "has_value", "left": "{{ vars.token }}"},
        "then": [
            {
                "type": "update_secret",
                "secret": "ACCESS_TOKEN",
                "value": "{{ vars.token }}",
                "expires_in": "{{ vars.ttl }}",
            },
            {
                "type": "if",
                "condition": {"op": "has_value", "left": "{{ vars.refresh }}"},
                "then": [
                    {
                        "type": "update_secret",
                        "secret": "REFRESH_TOKEN",
                        "value": "{{ vars.refresh }}",
                    }
                ],
            },
        ],
        "else": [
            {
                "type": "throw",
                "status": 502,
                "message": "the token endpoint returned no access_token",
            }
        ],
    },
]
