"""Rate limits of the routes callers poll: refreshes, service endpoint runs and value reads.

Each route kind has its rules, each rule counts by one thing (the caller a credential belongs to,
or the client address) and allows so many hits per window (`TOKENFARM_RATE_LIMIT_*`). A request
over any rule is refused with 429 `rate_limited` and `Retry-After`, before anything else is done
for it, and counted in `tokenfarm_rate_limited` (by route kind and rule kind, never by who).

`RateLimiter.check` is the one place that counts: the routes call it, and so do their fast paths
(app/fastpath.py), which answer before routing. A request counts once even when a fast path
hands it on to its route, which calls `check` again. The counting is the `limits` library's
fixed window (one counter per rule and caller, the cheapest of its strategies), kept in its
async storage: in memory, each process on its own, or in Redis
(`TOKENFARM_RATE_LIMIT_STORAGE=redis://…`) so that replicas share one budget. If Redis fails,
requests are let through (and a warning logged): the limits protect the service, they must not
take it down.

Rules are data (`Rule`), so a later per-endpoint `rate_limit` can pass its own to `check`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NoReturn

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.errors import StorageError
from starlette.types import Scope

from app.clients import Network, client_address
from app.errors import RateLimited

if TYPE_CHECKING:
    from app.auth.actor import Actor
    from app.config import Settings

logger = logging.getLogger("tokenfarm.ratelimit")

# Set on a request's scope once it was counted (a fast path that hands on, then its route).
_COUNTED = "tokenfarm.rate_limit_counted"
KEY_PREFIX = "tokenfarm"
# A Redis that doesn't answer must not hold requests up for long: they go through without it.
REDIS_TIMEOUT_SECONDS = 0.5
WARN_EVERY_SECONDS = 60.0


class RouteKind(StrEnum):
    """What a limited request does (a label of the metric)."""

    REFRESH = "refresh"
    ENDPOINT = "endpoint"
    VALUE_READ = "value_read"


class CountedBy(StrEnum):
    """Whom a rule counts (a label of the metric)."""

    CREDENTIAL = "credential"
    ADDRESS = "address"


REFRESH_BACKOFF = "refresh_backoff"
"""The metric's `limit` of a refresh refused because the secret's refreshes keep failing."""


@dataclass(frozen=True)
class Window:
    """One `limits` item (`60 per 1 minute`) with what counting by it needs, computed once."""

    item: RateLimitItem
    key: str  # the part of a counter's key that names the limit: `60/1/minute`
    seconds: int
    amount: int

    @classmethod
    def of(cls, item: RateLimitItem) -> Window:
        """The window of an item."""
        key = f"{item.amount}/{item.multiples}/{item.GRANULARITY.name}"
        return cls(item, key, item.get_expiry(), item.amount)


@dataclass(frozen=True)
class Rule:
    """One limit: whom it counts, and the hits allowed per window (all must hold)."""

    by: CountedBy
    windows: tuple[Window, ...]

    @classmethod
    def parse(cls, by: CountedBy, text: str) -> Rule | None:
        """A rule from a setting's text (`60/minute`, `10/second;600/hour`); None when empty."""
        if not text.strip():
            return None
        return cls(by, tuple(Window.of(item) for item in parse_many(text)))


Refused = Callable[[RouteKind, str], None]


class RateLimiter:
    """Counts hits per rule and caller; one per app."""

    def __init__(
        self,
        rules: Mapping[RouteKind, Sequence[Rule]],
        storage_uri: str = "memory://",
        *,
        refused: Refused | None = None,
        clock: Callable[[], float] = time.time,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self.trusted = tuple(trusted_proxies)
        self.rules = {kind: tuple(rules.get(kind, ())) for kind in RouteKind}
        # Each rule of a route with the start of its counters' keys, built once.
        self._plans = {kind: _plan(kind, self.rules[kind]) for kind in RouteKind}
        self.storage, self._pool = _storage(storage_uri)
        self.refused = refused
        # The storage's time, for Retry-After (tests that move it move this too).
        self.clock = clock
        self._warned_at = -math.inf

    @classmethod
    def from_settings(cls, settings: Settings, *, refused: Refused | None = None) -> RateLimiter:
        """The limiter the `TOKENFARM_RATE_LIMIT_*` settings describe."""
        texts = {
            RouteKind.REFRESH: (
                settings.rate_limit_refresh_per_credential,
                settings.rate_limit_refresh_per_address,
            ),
            RouteKind.ENDPOINT: (
                settings.rate_limit_endpoint_per_credential,
                settings.rate_limit_endpoint_per_address,
            ),
            RouteKind.VALUE_READ: (
                settings.rate_limit_value_read_per_credential,
                settings.rate_limit_value_read_per_address,
            ),
        }
        rules = {}
        for kind, (per_credential, per_address) in texts.items():
            parsed = (
                Rule.parse(CountedBy.CREDENTIAL, per_credential),
                Rule.parse(CountedBy.ADDRESS, per_address),
            )
            rules[kind] = [rule for rule in parsed if rule is not None]
        return cls(
            rules,
            settings.rate_limit_storage,
            refused=refused,
            trusted_proxies=settings.trusted_proxy_networks,
        )

    async def check(
        self, scope: Scope, kind: RouteKind, actor: Actor, extra: Sequence[Rule] = ()
    ) -> None:
        """Count the request against the rules of `kind` (and `extra`), in order, or raise
        `RateLimited` with the seconds until the exhausted window ends. A request is counted
        once, and only up to the first rule that refuses it: over its caller's limit, it spends
        nothing of its address's budget."""
        if scope.get(_COUNTED):
            return
        scope[_COUNTED] = True
        storage = self.storage
        plan = self._plans[kind] + _plan(kind, extra) if extra else self._plans[kind]
        try:
            for by, prefix, windows in plan:
                who = (
                    _caller_key(actor)
                    if by is CountedBy.CREDENTIAL
                    else _address(scope, self.trusted)
                )
                for window in windows:
                    # The fixed window of `limits`' FixedWindowRateLimiter.hit, on its storage
                    # directly: the strategy would build the same key anew on every call.
                    key = f"{prefix}{who}/{window.key}"
                    if await storage.incr(key, window.seconds) > window.amount:
                        await self._refuse(kind, by, window.item, key)
        except StorageError as exc:
            self._storage_failed(exc)

    async def _refuse(
        self, kind: RouteKind, by: CountedBy, item: RateLimitItem, key: str
    ) -> NoReturn:
        """Count the refusal and raise `RateLimited` with the seconds until the window ends."""
        reset_at = await self.storage.get_expiry(key)
        if self.refused is not None:
            self.refused(kind, by)
        per = "caller" if by is CountedBy.CREDENTIAL else "client address"
        raise RateLimited(
            f"too many {_WHAT[kind]} from this {per}: at most {item.amount} per "
            f"{_window(item)}; try again after the Retry-After seconds",
            retry_after_seconds=reset_at - self.clock(),
        )

    def _storage_failed(self, exc: StorageError) -> None:
        """Let the request through; warn at most once a minute (a Redis outage is one event)."""
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            logger.warning(
                "rate limits are not counted: their storage failed (%s)",
                type(exc.storage_error).__name__,
            )

    async def close(self) -> None:
        """Close the connections to Redis, if any."""
        if self._pool is not None:
            await self._pool.aclose()


_WHAT = {
    RouteKind.REFRESH: "refreshes",
    RouteKind.ENDPOINT: "endpoint runs",
    RouteKind.VALUE_READ: "value reads",
}


def _plan(
    kind: RouteKind, rules: Sequence[Rule]
) -> tuple[tuple[CountedBy, str, tuple[Window, ...]], ...]:
    """Each rule with the start of its counters' keys (`value_read/credential/`)."""
    return tuple((rule.by, f"{kind.value}/{rule.by.value}/", rule.windows) for rule in rules)


def _window(item: RateLimitItem) -> str:
    """`minute`, `10 seconds`."""
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


def _storage(uri: str) -> tuple[Storage, Any]:
    """The `limits` async storage for a `TOKENFARM_RATE_LIMIT_STORAGE`, and the Redis connection
    pool to close (None in memory)."""
    if uri == "memory://":
        return MemoryStorage(), None
    # Imported only when configured: redis-py's asyncio client, through a pool of our own so
    # it can be closed, with short timeouts.
    from redis.asyncio import ConnectionPool

    pool = ConnectionPool.from_url(
        uri,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    # `limits` types its options as plain values; it hands them to redis-py as they are.
    options: dict[str, Any] = {"connection_pool": pool}
    storage = RedisStorage(
        f"async+{uri}",
        implementation="redispy",
        key_prefix=KEY_PREFIX,
        wrap_exceptions=True,
        **options,
    )
    return storage, pool


def _caller_key(actor: Actor) -> str:
    """Whom a credential belongs to, hashed (a Redis key names no one)."""
    return _hashed(actor.label)


@functools.lru_cache(maxsize=4096)
def _hashed(label: str) -> str:
    return hashlib.blake2b(label.encode(), digest_size=12).hexdigest()


def _address(scope: Scope, trusted: Sequence[Network]) -> str:
    """The client's address, as the login throttle sees it (app/clients.py)."""
    return client_address(scope, trusted) or "unknown"
