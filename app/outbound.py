"""The one door to the network: every outbound call of every run goes through `Outbound`.

It owns the shared `httpx.AsyncClient` (created in the app's lifespan), turns transport failures
into the domain errors a run reports, caps the size of what it reads, and never puts a URL's query
string (which may carry a secret) into an error message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.errors import BadUpstreamResponse, BindingError, UpstreamTimeout, UpstreamUnreachable

MAX_RESPONSE_BYTES = 1024 * 1024


@dataclass
class OutboundResponse:
    """What a run keeps of an upstream answer."""

    status: int
    headers: dict[str, str]
    content: bytes
    content_type: str = field(default="")


def describe_target(method: str, url: str) -> str:
    """`POST auth.example.com/oauth/token`: enough to tell which call, never the query string."""
    parts = urlsplit(url)
    return f"{method} {parts.hostname or '?'}{parts.path}"


class Outbound:
    """Sends the requests of runs with one shared client."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        default_timeout_seconds: float = 30.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._client = client or httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self.default_timeout_seconds = default_timeout_seconds
        self.max_response_bytes = max_response_bytes

    async def aclose(self) -> None:
        """Close the shared client (at shutdown)."""
        await self._client.aclose()

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        data: dict[str, Any] | None = None,
        json: Any = None,
        content: str | None = None,
        timeout_seconds: float | None = None,
    ) -> OutboundResponse:
        """Send one request; failures become `UpstreamTimeout` / `UpstreamUnreachable`."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BindingError(
                f"the URL must be absolute http:// or https://, got scheme {parts.scheme or 'none'!r}"
            )
        target = describe_target(method, url)
        timeout = timeout_seconds or self.default_timeout_seconds
        try:
            request = self._client.build_request(
                method,
                url,
                params=params or None,
                headers=headers,
                data=data,
                json=json,
                content=content,
                timeout=httpx.Timeout(timeout),
            )
            if auth is not None:
                request = next(httpx.BasicAuth(*auth).auth_flow(request))
            response = await self._client.send(request, stream=True)
            try:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > self.max_response_bytes:
                        raise BadUpstreamResponse(
                            f"{target}: the response is larger than {self.max_response_bytes} bytes"
                        )
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"{target}: no answer within {timeout:g} s") from None
        except httpx.InvalidURL:
            raise BindingError(f"{target}: the URL is not valid") from None
        except httpx.TransportError as exc:
            # The class name only: httpx messages can repeat the full URL.
            raise UpstreamUnreachable(f"{target}: connection failed ({type(exc).__name__})") from None
        return OutboundResponse(
            status=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            content=bytes(body),
            content_type=response.headers.get("content-type", ""),
        )
