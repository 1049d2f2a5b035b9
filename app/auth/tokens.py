"""Login tokens: HS256 JWTs through python-jose, wrapped here so the library stays replaceable."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from jose import jwt
from jose.exceptions import JOSEError

from app.config import Settings
from app.crypto import development_secret
from app.errors import ConfigurationError, NotAuthenticated

ALGORITHM = "HS256"
ISSUER = "tokenfarm"
AUDIENCE = "tokenfarm-api"
MIN_SECRET_BYTES = 32
MAX_TOKEN_LENGTH = 4096
MAX_HEADER_LENGTH = 256
REQUIRED_CLAIMS = ("sub", "iat", "exp", "aud", "iss")
# The user's token generation when the token was issued; python-jose doesn't know the claim.
GENERATION_CLAIM = "gen"


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says."""

    subject: str
    issued_at: int
    expires_at: int
    generation: int


def load_jwt_secret(settings: Settings) -> str:
    """The signing key: configured, or (in development only) generated and kept in a file."""
    secret = settings.jwt_secret
    if not secret:
        if settings.environment != "development":
            raise ConfigurationError(
                "TOKENFARM_JWT_SECRET is required when TOKENFARM_ENVIRONMENT is "
                f"{settings.environment!r}: set it to 32+ random bytes, e.g. the output of "
                '`python -c "import secrets; print(secrets.token_urlsafe(48))"`'
            )
        secret = development_secret(
            settings.jwt_secret_file, lambda: secrets.token_urlsafe(48), "TOKENFARM_JWT_SECRET"
        )
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"TOKENFARM_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long"
        )
    return secret


class TokenService:
    """Issues and verifies login tokens with one key."""

    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def __repr__(self) -> str:
        return "TokenService(<redacted>)"

    def issue(self, subject: str, generation: int, now: datetime) -> str:
        """A signed token for `subject` at its token `generation`, valid for `ttl_seconds`."""
        issued_at = int(now.timestamp())
        claims = {
            "sub": subject,
            GENERATION_CLAIM: generation,
            "iat": issued_at,
            "exp": issued_at + self.ttl_seconds,
            "aud": AUDIENCE,
            "iss": ISSUER,
        }
        return str(jwt.encode(claims, self._secret, algorithm=ALGORITHM))

    def verify(self, token: str) -> TokenClaims:
        """The claims of a valid token, or NotAuthenticated (never saying more than needed)."""
        if len(token) > MAX_TOKEN_LENGTH or len(token.split(".", 1)[0]) > MAX_HEADER_LENGTH:
            raise NotAuthenticated("the token is too large")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != ALGORITHM:
                raise NotAuthenticated("the token is not valid")
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                # python-jose skips the audience check when `aud` is absent: require it.
                options={f"require_{claim}": True for claim in REQUIRED_CLAIMS},
            )
        # python-jose lets the int() errors of odd claim values (a list, 1e400) escape.
        except (JOSEError, TypeError, ValueError, OverflowError):
            raise NotAuthenticated("the token is not valid or has expired") from None
        subject, issued_at, expires_at = claims["sub"], claims["iat"], claims["exp"]
        generation = claims.get(GENERATION_CLAIM)
        # This service issues integers only; `type` also refuses a bool posing as an int. A
        # token without a generation predates it (or was never ours): refused, never defaulted.
        numbers = (issued_at, expires_at, generation)
        if not subject or any(type(number) is not int for number in numbers):
            raise NotAuthenticated("the token is not valid")
        assert isinstance(generation, int)
        return TokenClaims(
            subject=subject, issued_at=issued_at, expires_at=expires_at, generation=generation
        )
