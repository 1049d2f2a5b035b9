"""Throttling of failed logins, per account and per client address (docs/api.md, "Login").

Each failed login counts against the account it named (whether or not it exists, so a 429 tells
nothing about which emails do) and against the client address it came from. Past a number of
free failures, the next attempt must wait `app/backoff.py:backoff_seconds` after the last failure:
1 s, 2 s, 4 s… capped per kind. The address cap is high (5 minutes): the per-address throttle is
what stops one client guessing or spraying passwords over many accounts. The account cap is low
(1 minute) and its free budget larger, so that guessing from many addresses slows down while an
attacker can't lock the owner out for long: from another address the owner still gets in.

A success forgives the failures that address made against that account (the owner mistyped) and
resets the account; it does not forgive the address's failures against other accounts, so an
attacker can't clear its record by logging in to an account of its own between guesses.
Attempts being checked count as failures until they end, so firing many at once doesn't get
more guesses in than one after the other. An attempt refused with 429 is not checked and doesn't
count. IPv6 clients count per /64 (what one host usually holds).

The records live in this process's memory, bounded (least recently used dropped first), and are
forgotten an hour after their last failure: with several replicas, each counts on its own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from app.backoff import backoff_seconds
from app.clients import Network
from app.clock import Clock
from app.errors import NotAuthenticated, TooManyAttempts

logger = logging.getLogger("tokenfarm.auth")

FORGET_AFTER_SECONDS = 3600.0
MAX_RECORDS = 100_000
# How many accounts an address record remembers failures against, to forgive them on success.
MAX_ACCOUNTS_PER_ADDRESS = 64


@dataclass(frozen=True)
class Limit:
    """Free failures, then an exponential wait after each further one, up to a cap."""

    free_failures: int
    max_delay_seconds: float
    base_delay_seconds: float = 1.0

    def delay_seconds(self, failures: int) -> float:
        """How long to wait after the last of `failures` before the next attempt."""
        if failures < self.free_failures:
            return 0.0
        return backoff_seconds(
            failures - self.free_failures + 1,
            base_seconds=self.base_delay_seconds,
            max_seconds=self.max_delay_seconds,
            fixed_share=1.0,
            random_share=0.0,
        )


ADDRESS_LIMIT = Limit(free_failures=5, max_delay_seconds=300.0)
ACCOUNT_LIMIT = Limit(free_failures=10, max_delay_seconds=60.0)


@dataclass
class _Record:
    failures: int = 0
    pending: int = 0
    last_failure_at: float = -math.inf
    # Address records only: failures per account, forgiven when that account logs in.
    by_account: dict[bytes, int] = field(default_factory=dict)

    def wait_seconds(self, limit: Limit, now: float) -> float:
        """0 when an attempt may start now; else how long to wait."""
        if self.failures + self.pending < limit.free_failures:
            return 0.0
        wait = self.last_failure_at + limit.delay_seconds(self.failures) - now
        if self.pending:
            # An attempt past the free ones is in flight: its outcome decides the next wait.
            wait = max(wait, 1.0)
        return max(wait, 0.0)


class _Records:
    """Records by key, least recently used first, forgotten when stale."""

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._records: OrderedDict[bytes | str, _Record] = OrderedDict()

    def get(self, key: bytes | str, now: float) -> _Record:
        record = self._records.get(key)
        if record is None or (
            not record.pending and now - record.last_failure_at > FORGET_AFTER_SECONDS
        ):
            record = _Record()
            self._records[key] = record
        self._records.move_to_end(key)
        while len(self._records) > self.max_records:
            self._records.popitem(last=False)
        return record

    def drop_if_clean(self, key: bytes | str) -> None:
        record = self._records.get(key)
        if record is not None and not record.failures and not record.pending:
            del self._records[key]

    def __len__(self) -> int:
        return len(self._records)


def account_key(email: str) -> bytes:
    """What identifies an account's record: a hash of the email as login matches it (a
    password typed into the email field is never kept)."""
    return hashlib.blake2b(email.strip().lower().encode(errors="replace"), digest_size=16).digest()


def address_key(host: str | None) -> str:
    """What identifies a client's record: its IPv4 address, or its IPv6 /64."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class LoginThrottle:
    """Failed-login records of one process; see the module docstring."""

    def __init__(
        self,
        clock: Clock,
        *,
        address_limit: Limit = ADDRESS_LIMIT,
        account_limit: Limit = ACCOUNT_LIMIT,
        max_records: int = MAX_RECORDS,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self.clock = clock
        self.trusted = tuple(trusted_proxies)
        self.address_limit = address_limit
        self.account_limit = account_limit
        self._addresses = _Records(max_records)
        self._accounts = _Records(max_records)

    def _now(self) -> float:
        return self.clock.now().timestamp()

    @contextmanager
    def attempt(self, email: str, host: str | None) -> Iterator[None]:
        """Admit a login attempt or raise TooManyAttempts; the block checks the password, and
        its outcome (NotAuthenticated is a failure) is counted when it ends."""
        account, address = account_key(email), address_key(host)
        now = self._now()
        by_address = self._addresses.get(address, now)
        by_account = self._accounts.get(account, now)
        wait = max(
            by_address.wait_seconds(self.address_limit, now),
            by_account.wait_seconds(self.account_limit, now),
        )
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise TooManyAttempts(
                f"too many failed logins: try again in {seconds} s", retry_after_seconds=seconds
            )
        by_address.pending += 1
        by_account.pending += 1
        try:
            yield
        except NotAuthenticated:
            self._failed(address, by_address, account, by_account)
            raise
        except BaseException:
            # Not an answer about the password (the database failed, the client left).
            by_address.pending -= 1
            by_account.pending -= 1
            raise
        else:
            self._succeeded(address, by_address, account, by_account)

    def _failed(
        self, address: str, by_address: _Record, account: bytes, by_account: _Record
    ) -> None:
        now = self._now()
        for record in (by_address, by_account):
            record.pending -= 1
            record.failures += 1
            record.last_failure_at = now
        if account in by_address.by_account or len(by_address.by_account) < (
            MAX_ACCOUNTS_PER_ADDRESS
        ):
            by_address.by_account[account] = by_address.by_account.get(account, 0) + 1
        if by_address.failures == self.address_limit.free_failures:
            logger.warning(
                "failed logins: client %s is throttled after %d failures",
                address,
                by_address.failures,
            )
        if by_account.failures == self.account_limit.free_failures:
            # Never the email: people type passwords into the wrong field.
            logger.warning(
                "failed logins: an account is throttled after %d failures from any address",
                by_account.failures,
            )

    def _succeeded(
        self, address: str, by_address: _Record, account: bytes, by_account: _Record
    ) -> None:
        by_address.pending -= 1
        by_address.failures -= by_address.by_account.pop(account, 0)
        by_account.pending -= 1
        by_account.failures = 0
        by_account.last_failure_at = -math.inf
        self._addresses.drop_if_clean(address)
        self._accounts.drop_if_clean(account)
