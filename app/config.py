"""The one settings object, read from `TOKENFARM_` environment variables."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.outbound import EgressAllowList
from app.pipeline.wire import parse_origin

Environment = Literal["development", "test", "staging", "production"]
# `N/minute`, `N/10 seconds`... joined by `;`: a subset of what the `limits` library parses,
# checked here without importing it (it costs every command line start 60 ms).
RATE_LIMIT = re.compile(r"\s*\d+\s*/\s*([1-9]\d*\s+)?(second|minute|hour|day)s?\s*")


class Settings(BaseSettings):
    """Configuration read from `TOKENFARM_*` environment variables (or a `.env` file)."""

    model_config = SettingsConfigDict(env_prefix="TOKENFARM_", env_file=".env", extra="ignore")

    environment: Environment = Field(
        "development",
        description="Deployment stage; picks the value of environment-specific secrets.",
    )
    data_dir: Path = Field(
        Path("data"), description="Where the default SQLite file and the development key file live."
    )
    database_url: str | None = Field(
        None,
        description=(
            "`sqlite:///path` or `postgresql://user:pass@host/db`; default: SQLite in data_dir."
        ),
    )
    encryption_keys: str | None = Field(
        None,
        repr=False,
        description="Comma-separated Fernet keys; the first encrypts, all decrypt.",
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["json", "text"] | None = Field(
        None,
        description="`json` (one object per line) or `text`; default: text in development, "
        "json elsewhere.",
    )
    http_timeout_seconds: float = Field(
        30.0, gt=0, le=300, description="Default timeout of an outbound request."
    )
    run_deadline_seconds: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="A run's overall deadline: retries that would end later are not started.",
    )
    versions_kept: int = Field(
        20, ge=20, le=10_000, description="Versions kept per secret and environment (at least 20)."
    )
    egress_allow: str = Field(
        "",
        description=(
            "Comma-separated CIDRs and host names that runs may reach although the egress guard "
            "refuses them by default (loopback, private, link-local...), plain http included; "
            "e.g. `127.0.0.0/8,::1,tokens.internal`."
        ),
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest request body accepted (413 beyond it, unread); `POST /v1/apply` "
        "takes up to twice the largest configuration document (2 MiB) whatever this says.",
    )
    body_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="How long a request's body may take to arrive after its headers (408 and "
        "the connection closed beyond it).",
    )
    max_secret_value_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest secret value a person may set (its JSON text, in bytes; 422 beyond "
        "it).",
    )

    jwt_secret: str | None = Field(
        None,
        repr=False,
        description="HS256 signing key of login tokens (32+ bytes); generated in development.",
    )
    jwt_ttl_seconds: int = Field(3600, ge=60, le=86_400, description="Lifetime of a login token.")
    auth_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a credential's actor is remembered (0: looked up on every "
        "request); changes made through this process take effect at once, changes from other "
        "replicas or the CLI within this time.",
    )
    password_hash_concurrency: int = Field(
        2,
        ge=1,
        le=64,
        description="Password hashes and checks (argon2, 64 MiB each) run at once in worker "
        "threads; more logins wait their turn, and other requests are not slowed.",
    )
    console_session_idle_seconds: int = Field(
        1800,
        ge=60,
        le=7 * 86_400,
        description="A console session ends after this long without a request (log in again).",
    )
    console_session_max_seconds: int = Field(
        43_200,
        ge=300,
        le=30 * 86_400,
        description="A console session ends this long after its login, however busy.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated CIDRs of reverse proxies whose `X-Forwarded-For` names the "
        "client (for the login throttle); empty: the connection's address is the client's.",
    )

    public_url: str | None = Field(
        None,
        description="The address people's browsers reach tokenfarm at (e.g. "
        "`https://tokenfarm.example.com`): the connect flow's redirect URI is "
        "`{TOKENFARM_PUBLIC_URL}/connect/callback`, and console cookies are `Secure` when it is "
        "https. Unset: everything but the connect flow works. Must be https in staging and "
        "production.",
    )
    connect_return_origins: str = Field(
        "",
        description="Comma-separated origins (`https://app.example.com`) a connect link's "
        "`return_to` may send the browser back to after a connect; empty: none (the connected "
        "page is shown).",
    )

    scheduler_enabled: bool = Field(
        True, description="Run the scheduler inside `tokenfarm serve` (off: run it on its own)."
    )
    scheduler_concurrency: int = Field(
        10, ge=1, le=1000, description="Runs one scheduler process starts at the same time."
    )
    scheduler_poll_seconds: float = Field(
        1.0, gt=0, le=60, description="How often the scheduler looks for due work."
    )
    scheduler_lease_seconds: float | None = Field(
        None,
        gt=0,
        le=7200,
        description="How long a replica's claim on a due run lasts before another replica takes "
        "it over (default: the run deadline plus 60 s; must exceed the run deadline).",
    )

    rate_limit_storage: str = Field(
        "memory://",
        description="Where rate limits count: `memory://` (each process on its own) or "
        "`redis://HOST:PORT[/DB]` (`rediss://` for TLS) so that replicas share them.",
    )
    rate_limit_refresh_per_credential: str = Field(
        "60/minute",
        description="`GET /refresh/{secret}` calls allowed per caller (the user or service "
        "account a credential belongs to); empty: no limit.",
    )
    rate_limit_refresh_per_address: str = Field(
        "60/minute",
        description="`GET /refresh/{secret}` calls allowed per client address; empty: no limit.",
    )
    rate_limit_endpoint_per_credential: str = Field(
        "60/minute",
        description="Service endpoint runs (`/api/services/{slug}/{readable_id}`) allowed per "
        "caller; empty: no limit.",
    )
    rate_limit_endpoint_per_address: str = Field(
        "60/minute",
        description="Service endpoint runs allowed per client address; empty: no limit.",
    )
    rate_limit_value_read_per_credential: str = Field(
        "1200/minute",
        description="Value reads (`GET /v1/secrets/{name}/value`) allowed per caller; empty: "
        "no limit.",
    )
    rate_limit_value_read_per_address: str = Field(
        "1200/minute",
        description="Value reads allowed per client address; empty: no limit.",
    )
    refresh_backoff_after_failures: int = Field(
        3,
        ge=1,
        le=1000,
        description="After this many failed refreshes of a secret in a row, on-demand "
        "refreshes (`/refresh`, refresh on read) wait out the same backoff as expiry-driven "
        "ones (30 s, doubling, at most an hour) and answer 503 with `Retry-After` meanwhile.",
    )

    @field_validator("egress_allow")
    @classmethod
    def _egress_allow_is_valid(cls, value: str) -> str:
        """A bad entry stops start-up with a `ConfigurationError` that names it."""
        EgressAllowList.parse(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url_is_a_base_url(cls, value: str | None) -> str | None:
        """An absolute http(s) URL without query or fragment; a trailing slash is dropped."""
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"TOKENFARM_PUBLIC_URL: {value!r} is not an absolute http(s) URL "
                "(e.g. https://tokenfarm.example.com)"
            )
        if parts.query or parts.fragment:
            raise ValueError("TOKENFARM_PUBLIC_URL: must not carry a ?query or #fragment")
        return value.strip().rstrip("/")

    @field_validator("connect_return_origins")
    @classmethod
    def _return_origins_are_origins(cls, value: str) -> str:
        """Each entry is an origin; a bad one stops start-up naming it."""
        for entry in filter(None, (part.strip() for part in value.split(","))):
            try:
                parse_origin(entry)
            except ValueError as exc:
                raise ValueError(f"TOKENFARM_CONNECT_RETURN_ORIGINS: {exc}") from None
        return value

    @property
    def return_origins(self) -> set[str]:
        """`connect_return_origins` parsed (normalized origins)."""
        entries = (part.strip() for part in self.connect_return_origins.split(","))
        return {parse_origin(entry) for entry in entries if entry}

    @property
    def connect_callback_url(self) -> str | None:
        """The connect flow's redirect URI, or None without a public URL."""
        return f"{self.public_url}/connect/callback" if self.public_url else None

    @property
    def public_url_is_https(self) -> bool:
        """Whether browsers reach tokenfarm over https (console cookies are then `Secure`)."""
        return bool(self.public_url and self.public_url.startswith("https://"))

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies_are_networks(cls, value: str) -> str:
        """A bad entry stops start-up naming it."""
        for entry in filter(None, (part.strip() for part in value.split(","))):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"TOKENFARM_TRUSTED_PROXIES: {entry!r} is not an IP address or CIDR"
                ) from None
        return value

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """`trusted_proxies` parsed."""
        entries = filter(None, (part.strip() for part in self.trusted_proxies.split(",")))
        return [ipaddress.ip_network(entry, strict=False) for entry in entries]

    @field_validator("rate_limit_storage")
    @classmethod
    def _rate_limit_storage_is_known(cls, value: str) -> str:
        """Only the stores tokenfarm is tested with: memory, and Redis for replicas."""
        if value != "memory://" and not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be memory:// or redis://HOST:PORT[/DB] (rediss:// for TLS)")
        return value

    @field_validator(
        "rate_limit_refresh_per_credential",
        "rate_limit_refresh_per_address",
        "rate_limit_endpoint_per_credential",
        "rate_limit_endpoint_per_address",
        "rate_limit_value_read_per_credential",
        "rate_limit_value_read_per_address",
    )
    @classmethod
    def _rate_limit_is_valid(cls, value: str) -> str:
        """`N/second|minute|hour|day` (several joined by `;`), or empty for none."""
        value = value.strip()
        if value and not all(RATE_LIMIT.fullmatch(part) for part in value.split(";")):
            raise ValueError(
                f"{value!r} is not a rate limit: write N/second, N/minute, N/hour or N/day "
                "(several joined by ';'), or leave it empty for no limit"
            )
        return value

    @model_validator(mode="after")
    def _lease_outlasts_a_run(self) -> Settings:
        """A claim that ran out while its run still went on would let another replica run it."""
        lease = self.scheduler_lease_seconds
        if lease is not None and lease <= self.run_deadline_seconds:
            raise ValueError(
                f"TOKENFARM_SCHEDULER_LEASE_SECONDS ({lease:g}) must exceed "
                f"TOKENFARM_RUN_DEADLINE_SECONDS ({self.run_deadline_seconds:g})"
            )
        return self

    @model_validator(mode="after")
    def _public_url_is_https_in_production(self) -> Settings:
        """Codes and cookies must not cross the network in the clear outside development."""
        if (
            self.public_url
            and self.environment in ("staging", "production")
            and not self.public_url.startswith("https://")
        ):
            raise ValueError(
                f"TOKENFARM_PUBLIC_URL must be https:// in {self.environment} "
                f"(got {self.public_url!r}); http is only for development and test"
            )
        return self

    @property
    def resolved_log_format(self) -> Literal["json", "text"]:
        """The log format: as set, else text in development and JSON elsewhere."""
        if self.log_format is not None:
            return self.log_format
        return "text" if self.environment == "development" else "json"

    @property
    def lease_seconds(self) -> float:
        """How long a scheduler's claim lasts."""
        return self.scheduler_lease_seconds or self.run_deadline_seconds + 60

    @property
    def resolved_database_url(self) -> str:
        """The database URL as the user gave it, or the default SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'tokenfarm.db'}"

    @property
    def jwt_secret_file(self) -> Path:
        """The development JWT key file, generated on first start when none is configured."""
        return self.data_dir / "jwt.secret"

    @property
    def key_file(self) -> Path:
        """The development key file, generated on first start when no keys are configured."""
        return self.data_dir / "encryption.keys"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; a FastAPI dependency that tests override."""
    return Settings()
