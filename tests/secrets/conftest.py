"""Fixtures of the secrets tests: canary values that no response but the value read may carry."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

# The one route whose answer carries a value; every other answer is checked for canaries.
VALUE_READ = re.compile(r"^/v1/secrets/[^/]+/value$")


@dataclass
class Canaries:
    """Unique values that must never show up outside `GET /v1/secrets/{name}/value`."""

    values: list[str] = field(default_factory=list)
    checked: int = 0

    def new(self, label: str) -> str:
        """A fresh canary value (plain characters, so it reads the same inside JSON)."""
        value = f"canary-{label}-{uuid.uuid4().hex}"
        self.values.append(value)
        return value

    def assert_absent(self, text: str, where: str) -> None:
        """Fail when `text` holds any canary minted so far."""
        leaked = [value for value in self.values if value in text]
        assert not leaked, f"{where} leaks {leaked}"


@pytest.fixture
def canaries(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> Iterator[Canaries]:
    """Checks every response of `client` (and, at the end, the server log) for canary values."""
    guard = Canaries()

    async def check(response: httpx.Response) -> None:
        await response.aread()
        request = response.request
        if request.method == "GET" and VALUE_READ.match(request.url.path):
            return
        guard.checked += 1
        guard.assert_absent(response.text, f"{request.method} {request.url.path}")

    client.event_hooks["response"].append(check)
    yield guard
    client.event_hooks["response"].remove(check)
    guard.assert_absent(caplog.text, "the server log")


async def create_service(client: httpx.AsyncClient, slug: str, readable_id: str) -> None:
    """A service with one endpoint that only logs, to bind a `refresh_endpoint` to."""
    response = await client.post(
        "/v1/services",
        json={
            "slug": slug,
            "name": slug.title(),
            "endpoints": [
                {
                    "readable_id": readable_id,
                    "name": "Refresh",
                    "action": [{"type": "log", "message": "refreshing"}],
                }
            ],
        },
    )
    assert response.status_code == 201, response.text


async def put_value(
    client: httpx.AsyncClient, name: str, value: Any, **fields: Any
) -> dict[str, Any]:
    """Set a value by hand, failing the test on any error; answers the write's outcome."""
    response = await client.put(f"/v1/secrets/{name}/value", json={"value": value, **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def read_value(
    client: httpx.AsyncClient, name: str, environment: str | None = None
) -> dict[str, Any]:
    """The value read of a secret, failing the test on any error."""
    params = {"environment": environment} if environment else {}
    response = await client.get(f"/v1/secrets/{name}/value", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The `error` object of a response that must have `status`."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["message"], response.text
    return error
