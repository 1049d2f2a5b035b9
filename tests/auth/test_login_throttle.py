"""Failed logins are throttled per client address and per account, without locking the owner out.

Time is the app's clock, a ManualClock the tests move: no test waits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import httpx
import pytest
from fastapi import FastAPI

from app.auth.throttle import ACCOUNT_LIMIT, ADDRESS_LIMIT, address_key
from app.clients import client_host
from app.clock import ManualClock
from app.config import Settings
from app.db import utcnow
from app.main import create_app
from tests.auth.conftest import add_user
from tests.conftest import OWNER_EMAIL, OWNER_PASSWORD

WRONG = "wrong-password-canary-5c2e"
ATTACKER = "203.0.113.7"
OWNER_HOME = "198.51.100.20"
Client = Callable[[str], httpx.AsyncClient]


@pytest.fixture
def clock() -> ManualClock:
    """The app's clock, moved by hand."""
    return ManualClock(utcnow())


@pytest.fixture
async def app(settings: Settings, clock: ManualClock) -> AsyncIterator[FastAPI]:
    """The app reading `clock`."""
    application = create_app(settings, clock=clock)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def from_address(app: FastAPI) -> AsyncIterator[Client]:
    """A maker of anonymous clients calling from a given address."""
    async with AsyncExitStack() as stack:

        def make(address: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(address, 40000))
            http = httpx.AsyncClient(transport=transport, base_url="http://tokenfarm.test")
            stack.push_async_callback(http.aclose)
            return http

        yield make


async def log_in(
    http: httpx.AsyncClient, password: str, email: str = OWNER_EMAIL, forwarded_for: str = ""
) -> int:
    """`POST /auth/token` (through a proxy when `forwarded_for`); answers the status."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    data = {"username": email, "password": password}
    response = await http.post("/auth/token", data=data, headers=headers)
    if response.status_code == 429:
        assert_throttled(response)
    return response.status_code


def assert_throttled(response: httpx.Response) -> int:
    """A 429 with `Retry-After` (whole seconds) and an OAuth error body (RFC 6749 §5.2, the
    token endpoint's shape) saying the same wait; answers the seconds."""
    assert response.status_code == 429, response.text
    seconds = int(response.headers["retry-after"])
    assert seconds >= 1
    assert response.json() == {
        "error": "temporarily_unavailable",
        "error_description": f"too many failed logins: try again in {seconds} s",
    }
    return seconds


async def retry_after(http: httpx.AsyncClient, password: str = WRONG) -> int:
    """The wait a throttled login is told."""
    response = await http.post("/auth/token", data={"username": OWNER_EMAIL, "password": password})
    return assert_throttled(response)


@pytest.mark.usefixtures("client")  # the owner exists
class TestOneAddressGuessing:
    async def test_200_wrong_passwords_in_a_row_are_throttled(
        self, from_address: Client, caplog: pytest.LogCaptureFixture
    ) -> None:
        attacker = from_address(ATTACKER)
        with caplog.at_level(logging.DEBUG):
            responses = [
                await attacker.post(
                    "/auth/token", data={"username": OWNER_EMAIL, "password": WRONG}
                )
                for _ in range(200)
            ]
        statuses = [r.status_code for r in responses]
        free = ADDRESS_LIMIT.free_failures
        assert statuses[:free] == [400] * free
        assert statuses[free:] == [429] * (200 - free)
        for response in responses[free:]:
            assert assert_throttled(response) == 1
        # Throttled means not even checked: the right password gets the same answer.
        assert await log_in(attacker, OWNER_PASSWORD) == 429
        assert WRONG not in caplog.text and OWNER_PASSWORD not in caplog.text
        assert OWNER_EMAIL not in caplog.text
        assert ATTACKER in caplog.text  # the operator learns who is guessing

    async def test_the_wait_doubles_after_each_further_failure(
        self, from_address: Client, clock: ManualClock
    ) -> None:
        attacker = from_address(ATTACKER)
        for _ in range(ADDRESS_LIMIT.free_failures):
            assert await log_in(attacker, WRONG) == 400
        waits = []
        for _ in range(4):
            wait = await retry_after(attacker)
            waits.append(wait)
            await clock.advance(wait - 0.5)
            assert await log_in(attacker, WRONG) == 429  # not a moment early
            await clock.advance(0.5)
            assert await log_in(attacker, WRONG) == 400
        assert waits == [1, 2, 4, 8]

    async def test_the_right_password_after_the_wait_logs_in_and_clears_the_address(
        self, from_address: Client, clock: ManualClock
    ) -> None:
        owner = from_address(OWNER_HOME)
        for _ in range(ADDRESS_LIMIT.free_failures):
            assert await log_in(owner, WRONG) == 400
        await clock.advance(await retry_after(owner, OWNER_PASSWORD))
        assert await log_in(owner, OWNER_PASSWORD) == 200
        # The owner's typos are forgiven: a fresh budget of free attempts.
        for _ in range(ADDRESS_LIMIT.free_failures):
            assert await log_in(owner, WRONG) == 400
        assert await log_in(owner, WRONG) == 429

    async def test_the_owner_logs_in_from_another_address_while_an_attacker_is_throttled(
        self, from_address: Client
    ) -> None:
        attacker = from_address(ATTACKER)
        for _ in range(50):
            await log_in(attacker, WRONG)
        assert await log_in(attacker, WRONG) == 429
        assert await log_in(from_address(OWNER_HOME), OWNER_PASSWORD) == 200
        assert await log_in(attacker, OWNER_PASSWORD) == 429

    async def test_firing_guesses_at_once_gets_no_more_of_them_checked(
        self, from_address: Client
    ) -> None:
        attacker = from_address(ATTACKER)
        statuses = await asyncio.gather(*(log_in(attacker, WRONG) for _ in range(40)))
        assert statuses.count(400) <= ADDRESS_LIMIT.free_failures
        assert statuses.count(400) + statuses.count(429) == 40

    async def test_logging_in_to_an_own_account_does_not_clear_guesses_at_others(
        self, app: FastAPI, from_address: Client, owner_password_hash: str
    ) -> None:
        # The attacker holds an account of its own (same password hash as the owner's: cheap).
        await add_user(app, "mallory@example.com", owner_password_hash)
        attacker = from_address(ATTACKER)
        statuses = []
        for _ in range(4):
            statuses += [await log_in(attacker, WRONG), await log_in(attacker, WRONG)]
            statuses.append(await log_in(attacker, OWNER_PASSWORD, "mallory@example.com"))
        guesses = [s for i, s in enumerate(statuses) if i % 3 != 2]
        assert guesses[: ADDRESS_LIMIT.free_failures] == [400] * ADDRESS_LIMIT.free_failures
        assert set(guesses[ADDRESS_LIMIT.free_failures :]) == {429}

    async def test_spraying_many_accounts_from_one_address_is_throttled(
        self, from_address: Client
    ) -> None:
        attacker = from_address(ATTACKER)
        statuses = [await log_in(attacker, WRONG, f"user{n}@example.com") for n in range(20)]
        free = ADDRESS_LIMIT.free_failures
        assert statuses == [400] * free + [429] * (20 - free)


@pytest.mark.usefixtures("client")
class TestManyAddressesGuessing:
    async def test_the_account_waits_at_most_a_minute_then_the_owner_gets_in(
        self, from_address: Client, clock: ManualClock
    ) -> None:
        addresses = (f"192.0.2.{n}" for n in range(1, 200))
        for _ in range(ACCOUNT_LIMIT.free_failures):
            assert await log_in(from_address(next(addresses)), WRONG) == 400
        # A botnet keeps guessing, one try per fresh address, as soon as it may.
        waits = []
        for _ in range(7):
            wait = await retry_after(from_address(next(addresses)))
            waits.append(wait)
            await clock.advance(wait)
            assert await log_in(from_address(next(addresses)), WRONG) == 400
        assert waits == [1, 2, 4, 8, 16, 32, 60]
        assert ACCOUNT_LIMIT.max_delay_seconds == 60
        # The owner, from home, is told to wait no more than that, and then gets in.
        owner = from_address(OWNER_HOME)
        wait = await retry_after(owner, OWNER_PASSWORD)
        assert wait <= 60
        await clock.advance(wait)
        assert await log_in(owner, OWNER_PASSWORD) == 200

    async def test_unknown_and_known_emails_are_throttled_alike(self, from_address: Client) -> None:
        answers = {}
        for email in (OWNER_EMAIL, "nobody@example.com"):
            for n in range(ACCOUNT_LIMIT.free_failures):
                address = f"192.0.2.{n + 1}" if email == OWNER_EMAIL else f"192.0.2.{n + 101}"
                assert await log_in(from_address(address), WRONG, email) == 400
            response = await from_address("192.0.2.250").post(
                "/auth/token", data={"username": email, "password": WRONG}
            )
            answers[email] = (response.status_code, response.json())
        assert answers[OWNER_EMAIL] == answers["nobody@example.com"]
        assert answers[OWNER_EMAIL][0] == 429


class TestClientAddress:
    def test_an_ipv6_client_counts_per_64(self) -> None:
        assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
        assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")

    def test_an_ipv4_mapped_address_counts_as_ipv4(self) -> None:
        assert address_key("::ffff:203.0.113.7") == address_key("203.0.113.7")


@pytest.mark.usefixtures("client")
class TestBehindAProxy:
    async def test_x_forwarded_for_is_ignored_unless_the_proxy_is_trusted(
        self, from_address: Client
    ) -> None:
        attacker = from_address(ATTACKER)
        statuses = [
            await log_in(attacker, WRONG, forwarded_for=f"192.0.2.{n}") for n in range(1, 9)
        ]
        free = ADDRESS_LIMIT.free_failures
        assert statuses == [400] * free + [429] * (8 - free)


@pytest.mark.usefixtures("client")
class TestBehindATrustedProxy:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        """A proxy at 10.0.0.0/8 is trusted."""
        return settings.model_copy(update={"trusted_proxies": "10.0.0.0/8"})

    async def test_each_client_behind_the_proxy_counts_on_its_own(
        self, from_address: Client
    ) -> None:
        proxy = from_address("10.1.2.3")
        for _ in range(ADDRESS_LIMIT.free_failures):
            assert await log_in(proxy, WRONG, forwarded_for=ATTACKER) == 400
        assert await log_in(proxy, WRONG, forwarded_for=ATTACKER) == 429
        # A forged hop on the left changes nothing: the proxy appended the real client.
        assert await log_in(proxy, WRONG, forwarded_for=f"192.0.2.99, {ATTACKER}") == 429
        assert await log_in(proxy, OWNER_PASSWORD, forwarded_for=OWNER_HOME) == 200


class TestClientHost:
    TRUSTED = [ipaddress.ip_network("10.0.0.0/8")]

    def test_the_first_untrusted_hop_from_the_right_is_the_client(self) -> None:
        chain = ["6.6.6.6, 203.0.113.7", "10.0.0.9"]
        assert client_host("10.0.0.5", chain, self.TRUSTED) == "203.0.113.7"

    def test_an_untrusted_peer_is_the_client_whatever_it_forwards(self) -> None:
        assert client_host("203.0.113.7", ["192.0.2.1"], self.TRUSTED) == "203.0.113.7"
        assert client_host("10.0.0.5", ["192.0.2.1"], []) == "10.0.0.5"

    def test_a_trusted_peer_without_the_header_is_itself(self) -> None:
        assert client_host("10.0.0.5", [], self.TRUSTED) == "10.0.0.5"
