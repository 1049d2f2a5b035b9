"""Delivers webhooks: a secret's health changed -> a signed POST to every webhook that wants it.

The notifier listens on the process' event bus. A run's status changes are delivered by the
process that ran it (so with several replicas each event is sent once), in the background: a
delivery never slows down or fails a run. Each delivery is retried with exponential backoff and
jitter on network errors, 5xx and 429; pending retries live in this process only, so a restart
drops them.

Each delivery is signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
`webhook-signature`) with every signing secret still valid: `app/notifications/signing.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import __version__
from app.backoff import backoff_seconds, parse_retry_after
from app.config import Settings
from app.crypto import Keyring
from app.db import utcnow
from app.errors import RunFailed
from app.events import Event, SecretConnected, SecretStatusChanged
from app.notifications.schemas import EventType, PingResult
from app.notifications.signing import legacy_headers, standard_headers
from app.notifications.store import DeliveryTarget, WebhookStore
from app.outbound import Outbound, describe_target

logger = logging.getLogger("tokenfarm.notifications")


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard a delivery tries: `attempts` in all, waiting about `base_delay_seconds`
    doubled each time (at most `max_delay_seconds`), each attempt within `timeout_seconds`."""

    attempts: int = 5
    base_delay_seconds: float = 1.0
    max_delay_seconds: float = 30.0
    timeout_seconds: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_delay_seconds)
        # "Equal jitter": half the exponential ceiling fixed, half random.
        return backoff_seconds(
            attempt,
            base_seconds=self.base_delay_seconds,
            max_seconds=self.max_delay_seconds,
            fixed_share=0.5,
            random_share=0.5,
        )


def event_type(change: SecretStatusChanged) -> EventType | None:
    """The webhook event of a status change, or None for a change nobody is told about."""
    if change.new_status == change.old_status:
        return None
    if change.new_status == "failing":
        return "secret.failing"
    if change.new_status == "needs_reauth":
        return "secret.needs_reauth"
    if change.new_status == "ok":
        return "secret.recovered"
    return None


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def payload(change: SecretStatusChanged, kind: EventType, event_id: str) -> dict[str, Any]:
    """What a delivery says about a change: names, statuses and the (value-free) error."""
    return {
        "id": event_id,
        "type": kind,
        "occurred_at": _timestamp(change.at),
        "secret": change.secret,
        "status": change.new_status,
        "previous_status": change.old_status,
        "failure_count": change.failure_count,
        "last_error": change.last_error,
        "run_id": change.run_id,
    }


def connected_payload(event: SecretConnected, event_id: str) -> dict[str, Any]:
    """What a delivery says about a connect: the secret, how, its new version, who consented."""
    return {
        "id": event_id,
        "type": "secret.connected",
        "occurred_at": _timestamp(event.at),
        "secret": event.secret,
        "status": "ok",
        "previous_status": event.previous_status,
        "how": event.how,
        "version": event.version,
        "connected_by": event.connected_by,
    }


def encode(body: dict[str, Any]) -> str:
    """The body as sent and signed: compact JSON, ASCII only (so text and bytes agree)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class Attempt:
    """How one POST went."""

    delivered: bool
    status_code: int | None = None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None

    @property
    def outcome(self) -> str:
        """`answered 200`, or the error, for the log."""
        return self.error or f"answered {self.status_code}"


class Notifier:
    """Turns status changes into webhook deliveries; subscribe `notify` to the event bus."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        settings: Settings,
        *,
        policy: DeliveryPolicy | None = None,
        outbound: Outbound | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.keyring = keyring
        self.settings = settings
        self.policy = policy or DeliveryPolicy()
        # An Outbound of its own, behind the same egress guard: deliveries are not calls of a
        # run, so they must not be reported (or counted) as a run's upstream calls.
        self.outbound = outbound or Outbound(egress_allow=settings.egress_allow)
        self._owns_outbound = outbound is None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()

    def notify(self, event: Event) -> None:
        """The event-bus listener: start delivering a status change in the background."""
        if self._closing.is_set():
            return
        if isinstance(event, SecretConnected):
            body = connected_payload(event, str(uuid.uuid4()))
            self._spawn(self._dispatch_body(event.secret, "secret.connected", body))
            return
        if not isinstance(event, SecretStatusChanged):
            return
        kind = event_type(event)
        if kind is None:
            return
        self._spawn(self._dispatch(event, kind))

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, change: SecretStatusChanged, kind: EventType) -> None:
        """Deliver a status change to every webhook that wants it."""
        await self._dispatch_body(change.secret, kind, payload(change, kind, str(uuid.uuid4())))

    async def _dispatch_body(self, secret: str, kind: EventType, payload: dict[str, Any]) -> None:
        """Find the webhooks that want this event and deliver it to each, side by side."""
        try:
            async with self.session_factory() as session:
                targets = await WebhookStore(session, self.keyring, self.settings).targets_for(
                    secret, kind
                )
        except Exception as exc:
            logger.error("webhooks for %s of %s not loaded: %s", kind, secret, type(exc).__name__)
            return
        body = encode(payload)
        for target in targets:
            self._spawn(self._deliver(target, kind, body))

    async def _deliver(self, target: DeliveryTarget, kind: str, body: str) -> None:
        """POST the body until it is delivered, fails for good, or the attempts run out."""
        delivery_id = str(uuid.uuid4())
        attempts = self.policy.attempts
        for attempt in range(1, attempts + 1):
            result = await self.send(target, kind, body, delivery_id)
            last = result.delivered or not result.retryable or attempt == attempts
            logger.log(
                logging.INFO if result.delivered else logging.WARNING,
                "webhook %s: %s delivery %s %s (attempt %d of %d)%s",
                target.name,
                kind,
                delivery_id,
                result.outcome,
                attempt,
                attempts,
                "" if result.delivered or last else ", retrying",
            )
            if last:
                await self._note(target, result, attempt)
                return
            if await self._wait(self.policy.delay(attempt, result.retry_after)):
                logger.warning(
                    "webhook %s: %s delivery %s dropped at shutdown (retries are not kept)",
                    target.name,
                    kind,
                    delivery_id,
                )
                return
            current = await self._reload(target)
            if current is None:
                logger.info(
                    "webhook %s: %s delivery %s stopped: the webhook was deleted or disabled",
                    target.name,
                    kind,
                    delivery_id,
                )
                return
            target = current

    async def _wait(self, seconds: float) -> bool:
        """Sleep before a retry; True when the process shuts down meanwhile."""
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _reload(self, target: DeliveryTarget) -> DeliveryTarget | None:
        """The webhook as it is now (a new URL or signing secret applies to retries)."""
        try:
            async with self.session_factory() as session:
                store = WebhookStore(session, self.keyring, self.settings)
                return await store.enabled_target(target.webhook_id)
        except Exception as exc:
            logger.error("webhook %s not reloaded: %s", target.name, type(exc).__name__)
            return target

    async def _note(
        self, target: DeliveryTarget, result: Attempt, attempts: int, of: int | None = None
    ) -> None:
        """Remember the outcome on the webhook row, for `GET /v1/webhooks/{name}`."""
        error = None
        if not result.delivered:
            error = f"{result.outcome} (attempt {attempts} of {of or self.policy.attempts})"
        try:
            async with self.session_factory() as session, session.begin():
                await WebhookStore(session, self.keyring, self.settings).note_delivery(
                    target.webhook_id,
                    "delivered" if result.delivered else "failed",
                    error,
                    utcnow(),
                )
        except Exception as exc:
            logger.error("webhook %s: outcome not stored: %s", target.name, type(exc).__name__)

    async def send(self, target: DeliveryTarget, kind: str, body: str, delivery_id: str) -> Attempt:
        """One signed POST; never raises, and its error never quotes the URL's path or query."""
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"tokenfarm-webhooks/{__version__}",
            "X-Tokenfarm-Event": kind,
            # The delivery id is the message id: the same on every retry, so receivers can
            # deduplicate on it; each attempt is signed afresh with its own timestamp.
            **standard_headers(target.signing_secrets, delivery_id, timestamp, body),
            **legacy_headers(target.signing_secrets[0], delivery_id, timestamp, body),
        }
        try:
            response = await self.outbound.send(
                "POST",
                target.url,
                headers=headers,
                content=body,
                timeout_seconds=self.policy.timeout_seconds,
            )
        except RunFailed as exc:
            # Outbound's messages start with `POST host/path`; the path may be a credential.
            message = exc.message.removeprefix(f"{describe_target('POST', target.url)}: ")
            return Attempt(
                delivered=False,
                error=f"{exc.error_type}: {message}",
                retryable=exc.error_class != "permanent",
            )
        except Exception as exc:
            return Attempt(delivered=False, error=f"unexpected {type(exc).__name__}")
        status = response.status
        if 200 <= status < 300:
            return Attempt(delivered=True, status_code=status)
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
        return Attempt(
            delivered=False,
            status_code=status,
            error=f"answered {status}",
            retryable=status >= 500 or status in (408, 429),
            retry_after=retry_after,
        )

    async def ping(self, name: str) -> PingResult:
        """Send one signed `ping` (no retries) to webhook `name` and say how it went.

        No transaction stays open while it is sent: the webhook is read, then the outcome
        stored, each in a short one of its own.
        """
        async with self.session_factory() as session:
            store = WebhookStore(session, self.keyring, self.settings)
            target = store.target(await store.get(name))
        delivery_id = str(uuid.uuid4())
        body = encode(
            {
                "id": str(uuid.uuid4()),
                "type": "ping",
                "occurred_at": _timestamp(utcnow()),
                "webhook": target.name,
            }
        )
        result = await self.send(target, "ping", body, delivery_id)
        logger.info("webhook %s: ping delivery %s %s", target.name, delivery_id, result.outcome)
        await self._note(target, result, attempts=1, of=1)
        return PingResult(
            delivery_id=delivery_id,
            delivered=result.delivered,
            status_code=result.status_code,
            error=result.error,
        )

    async def aclose(self, timeout_seconds: float | None = None) -> None:
        """At shutdown: let attempts in flight finish, drop pending retries, close the client."""
        self._closing.set()
        if self._tasks:
            wait = self.policy.timeout_seconds + 1 if timeout_seconds is None else timeout_seconds
            _, pending = await asyncio.wait(list(self._tasks), timeout=wait)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._owns_outbound:
            await self.outbound.aclose()

    async def idle(self, timeout_seconds: float) -> bool:
        """Wait until no delivery is pending (tests and shutdown); False on timeout."""
        deadline = time.monotonic() + timeout_seconds
        while self._tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.wait(list(self._tasks), timeout=remaining)
        return True
