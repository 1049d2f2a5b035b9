"""The one door to the network: every outbound call of every run goes through `Outbound`.

It owns the shared `httpx.AsyncClient` (created in the app's lifespan), turns transport failures
into the domain errors a run reports, caps the size of what it reads, and never puts a URL's query
string (which may carry a secret) into an error message.
"""

from __future__ import annotations

import asyncio
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
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
    except ValueError:
        return f"{method} (an invalid URL)"
    return f"{method} {host}{parts.path}"


def check_url(url: str) -> None:
    """Refuse anything but an absolute http(s) URL with a host (and a numeric port, if any)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # parsing it is the check
    except ValueError:
        raise BindingError("the URL is not valid") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BindingError(
            f"the URL must be absolute http:// or https://, got scheme {parts.scheme or 'none'!r}"
        )


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
        follow_redirects: bool = False,
    ) -> OutboundResponse:
        """Send one request and read its answer within the timeout, all in all.

        Every failure becomes a domain error: `BindingError` (a request that can't be built),
        `UpstreamTimeout`, `UpstreamUnreachable`, or `BadUpstreamResponse` (a body that is too
        large or can't be decoded).
        """
        check_url(url)
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
        except httpx.InvalidURL:
            raise BindingError(f"{target}: the URL is not valid") from None
        except (UnicodeError, TypeError, ValueError) as exc:
            # The class name only: the message may quote a header or body value.
            raise BindingError(
                f"{target}: the request could not be built ({type(exc).__name__})"
            ) from None
        try:
            # httpx's timeout applies to each read; an upstream that trickles its answer byte
            # by byte must not hold the run (and its lock) longer than the node allows.
            async with asyncio.timeout(timeout):
                return await self._exchange(request, target)
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamTimeout(f"{target}: no answer within {timeout:g} s") from None
        except httpx.DecodingError:
            raise BadUpstreamResponse(
                f"{target}: the response body could not be decoded (its content-encoding is broken)"
            ) from None
        except httpx.RequestError as exc:
            # The class name only: httpx messages can repeat the full URL.
            raise UpstreamUnreachable(
                f"{target}: connection failed ({type(exc).__name__})"
            ) from None

    async def _exchange(self, request: httpx.Request, target: str) -> OutboundResponse:
        """Send the request and read at most `max_response_bytes` of the answer."""
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
        return OutboundResponse(
            status=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            content=bytes(body),
            content_type=response.headers.get("content-type", ""),
        )
