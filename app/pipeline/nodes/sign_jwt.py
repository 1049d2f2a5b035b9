"""`sign_jwt`: signs claims with a key held in a secret (RFC 7523 assertions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from app.pipeline.nodes.base import SECRET_NAME_PATTERN, VARIABLE_NAME_PATTERN, NodeBase

if TYPE_CHECKING:
    from app.pipeline.context import RunContext

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

    def secrets_read(self) -> Sequence[tuple[str, str]]:
        """The secret that holds the key."""
        return [("key_secret", self.key_secret)]

    def variables_set(self) -> Sequence[str]:
        """The variable that gets the token."""
        return [self.into]

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        """Sign a JWT into a variable; the token is a credential, so it is redacted everywhere."""
        # python-jose and cryptography take ~0.2 s to import: only a process that signs pays for
        # them, not every one that reads the node schemas (the command line does).
        from app.pipeline import signing

        signing.sign_into(self, ctx, entry)
