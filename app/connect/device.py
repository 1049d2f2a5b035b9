"""The device authorization grant (RFC 8628), for set-ups without a browser at hand.

tokenfarm asks the provider's device authorization endpoint for a `user_code` (shown to the
person, who enters it at `verification_uri` and consents) and a `device_code` (kept here, in
memory only, and sent to nobody but the token endpoint). A background task owned by the runtime
then polls the token endpoint: every `interval` seconds, 5 more after each `slow_down` (§3.5),
until `expires_in` is over, the provider answers `access_denied` or `expired_token`, or tokens
arrive, which are stored through the one home of storing a connection
(app/connect/tokens.py:store_connection). Each flow's outcome is kept (`DevicePolls.status`)
and logged; the device code never is. A restart ends the polls in flight: the person starts
again (the provider's device code expires on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connect.client import (
    ClientCredentials,
    TokenEndpointError,
    endpoint_request,
    token_request,
)
from app.connect.flow import attempt_rows
from app.connect.tokens import TokenSet, store_connection
from app.crypto import Keyring
from app.db import utcnow
from app.errors import BadUpstreamResponse, RunFailed, TokenfarmError
from app.outbound import Outbound, describe_target
from app.providers.resolve import ResolvedProvider

logger = logging.getLogger("tokenfarm.connect")

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL_SECONDS = 5  # RFC 8628 §3.2: when the answer names no interval
SLOW_DOWN_SECONDS = 5  # §3.5: each slow_down adds this much to the interval
# A provider may offer a device code for days; nobody waits that long at a prompt.
MAX_POLL_SECONDS = 3600
# Network failures and 5xx answers in a row before a flow gives up (each waits an interval).
MAX_TRANSIENT_FAILURES = 5
# How long a finished flow's outcome is kept for `status` (the CLI asks for it).
OUTCOME_KEPT_SECONDS = 3600

Outcome = Literal["pending", "connected", "denied", "expired", "failed"]
# How an outcome that stored nothing shows in the run log: (HTTP status, error type).
FAILURES: dict[str, tuple[int, str]] = {
    "denied": (403, "access_denied"),
    "expired": (408, "expired_token"),
    "failed": (502, "device_grant_failed"),
}


@dataclass(frozen=True)
class DeviceAuthorization:
    """A device authorization response (RFC 8628 §3.2); the device code never leaves here."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: int

    @classmethod
    def from_answer(cls, answer: dict[str, Any], target: str) -> DeviceAuthorization:
        """Parse the provider's answer; BadUpstreamResponse naming what is missing."""
        missing = [
            key
            for key in ("device_code", "user_code", "verification_uri", "expires_in")
            if not answer.get(key)
        ]
        # Google answers `verification_url`, as drafts of RFC 8628 did.
        uri = answer.get("verification_uri") or answer.get("verification_url")
        if uri:
            missing = [key for key in missing if key != "verification_uri"]
        expires_in, interval = answer.get("expires_in"), answer.get("interval")
        if missing or not isinstance(expires_in, int) or expires_in <= 0:
            what = ", ".join(missing) or "a positive expires_in"
            raise BadUpstreamResponse(f"{target}: the device authorization lacks {what}")
        complete = answer.get("verification_uri_complete")
        if not isinstance(interval, int) or interval <= 0:
            interval = DEFAULT_INTERVAL_SECONDS
        return cls(
            device_code=str(answer["device_code"]),
            user_code=str(answer["user_code"]),
            verification_uri=str(uri),
            verification_uri_complete=complete if isinstance(complete, str) else None,
            expires_in=min(expires_in, MAX_POLL_SECONDS),
            interval=interval,
        )


async def request_device_authorization(
    outbound: Outbound,
    credentials: ClientCredentials,
    provider: ResolvedProvider,
    scopes: list[str],
) -> DeviceAuthorization:
    """RFC 8628 §3.1: ask the provider for a device and a user code (client authenticated)."""
    url = provider.device_authorization_url
    if url is None:  # the caller checked; a provider may have changed since
        raise BadUpstreamResponse(f"provider {provider.name!r} has no device authorization URL")
    form = {"scope": " ".join(scopes)} if scopes else {}
    answer = await endpoint_request(outbound, credentials, provider, url, form)
    return DeviceAuthorization.from_answer(answer, describe_target("POST", url))


@dataclass
class DeviceFlow:
    """One device grant being polled: for which secret, at which provider, started by whom."""

    id: str
    secret: str
    provider: ResolvedProvider
    credentials: ClientCredentials = field(repr=False)
    authorization: DeviceAuthorization
    actor: str
    status: Outcome = "pending"
    message: str | None = None
    started_at: datetime = field(default_factory=utcnow)
    finished_at: float | None = None
    recorded: bool = False  # in the run log


class DevicePolls:
    """The device grants this process polls, one task each, owned by the runtime.

    Starting a flow for a secret that already has one in flight ends the older one: the newest
    user code is the one a person is looking at.
    """

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        settings: Settings,
        outbound: Outbound,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        slow_down_seconds: int = SLOW_DOWN_SECONDS,
    ) -> None:
        """Polls through `outbound`; store through `session_factory` (one transaction each)."""
        self.session_factory = session_factory
        self.keyring = keyring
        self.settings = settings
        self.outbound = outbound
        self._sleep = sleep
        self.slow_down_seconds = slow_down_seconds
        self._flows: dict[str, DeviceFlow] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(
        self,
        secret: str,
        provider: ResolvedProvider,
        credentials: ClientCredentials,
        authorization: DeviceAuthorization,
        *,
        actor: str,
    ) -> DeviceFlow:
        """Begin polling for `secret` in the background; the flow (its id for `status`)."""
        self._forget_old()
        for flow_id, flow in list(self._flows.items()):
            if flow.secret == secret and flow.status == "pending":
                self._finish(flow, "failed", "a newer device authorization replaced this one")
                task = self._tasks.pop(flow_id, None)
                if task is not None:
                    task.cancel()
        flow = DeviceFlow(
            id=secrets.token_urlsafe(12),
            secret=secret,
            provider=provider,
            credentials=credentials,
            authorization=authorization,
            actor=actor,
        )
        self._flows[flow.id] = flow
        task = asyncio.ensure_future(self._run(flow))
        self._tasks[flow.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(flow.id, None))
        return flow

    def status(self, flow_id: str) -> DeviceFlow | None:
        """A flow this process started (None: unknown here, or forgotten an hour after)."""
        return self._flows.get(flow_id)

    async def aclose(self) -> None:
        """End every poll (at shutdown): their flows fail, saying the server stopped."""
        for flow_id, task in list(self._tasks.items()):
            flow = self._flows.get(flow_id)
            if flow is not None and flow.status == "pending":
                self._finish(flow, "failed", "tokenfarm stopped before the device was authorized")
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _run(self, flow: DeviceFlow) -> None:
        try:
            status, message = await self._poll(flow)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a task's error would otherwise only reach the loop's log
            status = "failed"
            message = exc.message if isinstance(exc, TokenfarmError) else type(exc).__name__
        self._finish(flow, status, message)
        if not flow.recorded:
            await self._record_failure(flow, status, message)

    async def _record_failure(self, flow: DeviceFlow, status: Outcome, message: str | None) -> None:
        """The run log's record of a flow that stored nothing (its own transaction)."""
        http_status, error_type = FAILURES.get(status, FAILURES["failed"])
        try:
            async with self.session_factory() as session, session.begin():
                session.add_all(
                    attempt_rows(
                        flow.secret,
                        flow.actor,
                        flow.started_at,
                        http_status,
                        error_type,
                        message,
                        written=False,
                    )
                )
            flow.recorded = True
        except Exception as exc:  # the outcome is kept and logged; the record is best effort
            logger.warning(
                "the device authorization for %s was not recorded in the run log (%s)",
                flow.secret,
                type(exc).__name__,
            )

    async def _poll(self, flow: DeviceFlow) -> tuple[Outcome, str | None]:
        """Poll until tokens (stored), a final refusal or the end of `expires_in`."""
        authorization = flow.authorization
        deadline = time.monotonic() + authorization.expires_in
        interval = authorization.interval
        transient = 0
        form = {"grant_type": DEVICE_CODE_GRANT, "device_code": authorization.device_code}
        while True:
            await self._sleep(interval)
            if time.monotonic() >= deadline:
                return "expired", "the user code expired before anyone entered it; start again"
            try:
                answer = await token_request(self.outbound, flow.credentials, flow.provider, form)
            except TokenEndpointError as exc:
                if exc.error == "authorization_pending":
                    transient = 0
                    continue
                if exc.error == "slow_down":
                    interval += self.slow_down_seconds
                    continue
                if exc.error == "access_denied":
                    return "denied", "the person declined at the provider; nothing was stored"
                if exc.error == "expired_token":
                    return "expired", "the provider says the device code expired; start again"
                if exc.error_class == "permanent":
                    return "failed", exc.message
                transient += 1  # a 5xx or 429: wait another interval, a few times
                if transient >= MAX_TRANSIENT_FAILURES:
                    return "failed", exc.message
                continue
            except RunFailed as exc:
                # The network (retried a few times), the egress guard or a bad answer (final).
                transient += 1
                if exc.error_class == "permanent" or transient >= MAX_TRANSIENT_FAILURES:
                    return "failed", exc.message
                continue
            try:
                tokens = TokenSet.from_answer(answer)
            except ValueError as exc:
                return "failed", str(exc)
            async with self.session_factory() as session, session.begin():
                await store_connection(
                    session,
                    self.keyring,
                    self.settings,
                    flow.secret,
                    tokens,
                    how="device_code",
                    actor=flow.actor,
                )
                session.add_all(
                    attempt_rows(
                        flow.secret, flow.actor, flow.started_at, 200, None, None, written=True
                    )
                )
                flow.recorded = True
            return "connected", None

    def _finish(self, flow: DeviceFlow, status: Outcome, message: str | None) -> None:
        if flow.status != "pending":
            return
        flow.status = status
        flow.message = message
        flow.finished_at = time.time()
        logger.info(
            "device authorization for %s: %s%s",
            flow.secret,
            status,
            f" ({message})" if message else "",
            extra={"secret": flow.secret, "outcome": status, "actor": flow.actor},
        )

    def _forget_old(self) -> None:
        cutoff = time.time() - OUTCOME_KEPT_SECONDS
        for flow_id, flow in list(self._flows.items()):
            if flow.finished_at is not None and flow.finished_at < cutoff:
                del self._flows[flow_id]
