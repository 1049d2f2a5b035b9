"""A webhook receiver on loopback that records every delivery, and helpers to wait for them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.demo.loopback import LoopbackServer
from app.notifications.notifier import DeliveryPolicy, Notifier
from app.notifications.signing import verify_signature

# Retries as the default policy makes them, only quick.
QUICK = DeliveryPolicy(
    attempts=5, base_delay_seconds=0.05, max_delay_seconds=0.5, timeout_seconds=2
)


@dataclass
class Delivery:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> str:
        """The `X-Tokenfarm-Event` header."""
        return self.headers.get("x-tokenfarm-event", "")

    def json(self) -> Any:
        """The body, parsed."""
        import json

        return json.loads(self.body)

    def verifies(self, signing_secret: str) -> bool:
        """Whether the reference implementation of Standard Webhooks accepts the delivery
        with `signing_secret` (its `webhook-*` headers and the raw body)."""
        try:
            StandardWebhook(signing_secret).verify(self.body, self.headers)
        except WebhookVerificationError:
            return False
        return True

    def verifies_legacy(self, signing_secret: str) -> bool:
        """Whether the deprecated `X-Tokenfarm-Signature` checks out with `signing_secret`."""
        return verify_signature(
            signing_secret,
            self.headers.get("x-tokenfarm-timestamp", ""),
            self.body,
            self.headers.get("x-tokenfarm-signature", ""),
        )


@dataclass
class Receiver:
    """Records deliveries; answers the queued statuses first (one each), then 200."""

    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def at(self, path: str) -> list[Delivery]:
        """The deliveries to one path (each webhook of a test gets a path of its own)."""
        with self.lock:
            return [d for d in self.deliveries if d.path == path]

    def all(self) -> list[Delivery]:
        """Every delivery so far."""
        with self.lock:
            return list(self.deliveries)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.deliveries.append(
                Delivery(request.url.path, {k.lower(): v for k, v in request.headers.items()}, body)
            )
            status = self.answers.pop(0) if self.answers else 200
        return JSONResponse({"received": status < 300}, status_code=status)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver on loopback (the tests' egress allow list opens 127.0.0.0/8)."""
    recorder = Receiver()
    app = Starlette(routes=[Route("/{path:path}", recorder.handle, methods=["POST"])])
    with LoopbackServer(app, lifespan="off") as server:
        recorder.url = server.url
        yield recorder


@pytest.fixture
def notifier(app: FastAPI) -> Notifier:
    """The app's notifier, retrying quickly."""
    found: Notifier = app.state.notifier
    found.policy = QUICK
    return found


async def create_webhook(client: httpx.AsyncClient, name: str, url: str, **fields: Any) -> str:
    """Create a webhook through the API; answers its signing secret."""
    response = await client.post("/v1/webhooks", json={"name": name, "url": url, **fields})
    assert response.status_code == 201, response.text
    secret: str = response.json()["signing_secret"]
    return secret


async def wait_for(
    check: Callable[[], bool], timeout_seconds: float = 10.0, what: str = "deliveries"
) -> None:
    """Poll until `check()` holds; fail after `timeout_seconds`."""
    deadline = time.monotonic() + timeout_seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
