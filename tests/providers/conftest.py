"""A metadata server on loopback (OpenID Connect discovery and RFC 8414 documents, with faults
on demand) and helpers to make providers through the API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.demo.loopback import LoopbackServer
from tests.conftest import create_secret

OIDC_PATH = "/.well-known/openid-configuration"
RFC8414_PATH = "/.well-known/oauth-authorization-server"


@dataclass
class MetadataServer:
    """Serves `documents[path]` (or answers `faults[path]`, a status) and records each path."""

    url: str = ""
    documents: dict[str, Any] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def metadata(self, issuer: str) -> dict[str, Any]:
        """A metadata document of `issuer` whose endpoints live on this server."""
        return {
            "issuer": issuer,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "revocation_endpoint": f"{self.url}/revoke",
            "device_authorization_endpoint": f"{self.url}/device",
            "jwks_uri": f"{self.url}/jwks",
            "response_types_supported": ["code"],
        }

    def hits(self, path: str) -> int:
        """How many requests asked for `path`."""
        with self.lock:
            return self.requests.count(path)

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        with self.lock:
            self.requests.append(path)
            fault = self.faults.get(path)
            document = self.documents.get(path)
        if fault is not None:
            return Response("fault", status_code=fault)
        if document is None:
            return Response("not found", status_code=404)
        body = document if isinstance(document, str) else json.dumps(document)
        return Response(body, media_type="application/json")


@pytest.fixture
def metadata_server() -> Iterator[MetadataServer]:
    """A metadata server on loopback (the tests' egress allow list opens 127.0.0.0/8)."""
    server = MetadataServer()
    app = Starlette(routes=[Route("/{path:path}", server.handle, methods=["GET"])])
    with LoopbackServer(app, lifespan="off") as running:
        server.url = running.url
        yield server


async def client_secrets(client: httpx.AsyncClient) -> None:
    """The secrets a confidential client's provider names."""
    await create_secret(client, "CLIENT_ID", "client-id-canary-4d1e", environment_specific=False)
    await create_secret(
        client, "CLIENT_SECRET", "client-secret-canary-93ab", environment_specific=False
    )


EXPLICIT: dict[str, Any] = {
    "name": "acme",
    "authorization_url": "https://auth.acme.example/authorize",
    "token_url": "https://auth.acme.example/token",
    "client_id_secret": "CLIENT_ID",
    "client_secret_secret": "CLIENT_SECRET",
}


async def create_provider(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """Create a provider through the API, failing the test on any error."""
    response = await client.post("/v1/providers", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created
