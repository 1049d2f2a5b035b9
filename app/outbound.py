"""The one door to the network: every outbound call of every run goes through `Outbound`.

It owns the shared `httpx.AsyncClient` (created in the app's lifespan), turns transport failures
into the domain errors a run reports, caps the size of what it reads, and never puts a URL's query
string (which may carry a secret) into an error message.

It is also the egress guard. Before each request (and each redirect hop) it resolves the host,
refuses the request if any address is loopback, private, link-local, reserved and so on (unless
`TOKENFARM_EGRESS_ALLOW` opens it), and sends the request to the address it checked: the URL
names the IP, while the `Host` header and the TLS server name (SNI and certificate check) keep
the host name. So a DNS answer that changes between the check and the connect can't steer a run
to an internal address.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.errors import (
    BadUpstreamResponse,
    BindingError,
    ConfigurationError,
    EgressRefused,
    RunFailed,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from app.events import Events, UpstreamCall
from app.pipeline.wire import origin

MAX_RESPONSE_BYTES = 1024 * 1024
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ALLOW_SETTING = "TOKENFARM_EGRESS_ALLOW"
OUTCOME_OF_ERROR = {
    "upstream_timeout": "timeout",
    "upstream_unreachable": "network",
    "egress_refused": "refused",
    "bad_upstream_response": "bad_response",
    "binding_error": "refused",
    "destination_not_allowed": "refused",
}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""`(host, port) -> addresses`, in the order they should be tried."""
DestinationCheck = Callable[[str, Sequence[str]], None]
"""`(origin, texts of the request)`: raises to refuse a request before it is sent."""

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
HOST_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*"
)


@dataclass
class OutboundResponse:
    """What a run keeps of an upstream answer."""

    status: int
    headers: dict[str, str]
    content: bytes
    content_type: str = field(default="")


def wire_texts(request: httpx.Request) -> list[str]:
    """What a request carries, as text: its URL, every header value and its body."""
    return [
        str(request.url),
        *request.headers.values(),
        request.content.decode("utf-8", errors="replace"),
    ]


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


def literal_address(host: str) -> Address | None:
    """The address a host spells out, in any form a resolver accepts, or None for a name.

    Besides `127.0.0.1` and `::ffff:7f00:1` that includes the legacy IPv4 forms that
    `inet_aton` reads (`127.1`, `0x7f000001`, `2130706433`, `0177.0.0.1`), so they are judged
    as the address they are, whichever way they would be resolved.
    """
    bare = host.strip("[]")
    bare = bare[:-1] if bare.endswith(".") else bare
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except (OSError, ValueError):
        return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo), with its kind."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address.teredo is not None:
        return "Teredo", address.teredo[1]
    return None


def _default_refusal(address: Address) -> str | None:
    """Why the guard refuses `address` when nothing opens it, or None for a public address."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True)
class EgressAllowList:
    """The targets `TOKENFARM_EGRESS_ALLOW` opens: networks (CIDRs) and exact host names."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> EgressAllowList:
        """Read `127.0.0.0/8,::1,tokens.internal`; a bad entry is a `ConfigurationError`."""
        networks: list[Network] = []
        hosts: set[str] = set()
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                continue
            if "://" in entry:
                raise ConfigurationError(
                    f"{ALLOW_SETTING}: {entry!r} is a URL; list its host name or address only"
                )
            try:
                networks.append(ipaddress.ip_network(entry))
                continue
            except ValueError as exc:
                if "/" in entry or ":" in entry:
                    raise ConfigurationError(
                        f"{ALLOW_SETTING}: {entry!r} is not a valid address or CIDR ({exc})"
                    ) from None
            numeric = literal_address(entry)
            if numeric is not None:
                raise ConfigurationError(
                    f"{ALLOW_SETTING}: {entry!r} reads as the address {numeric}; "
                    f"write it as {numeric} or as a CIDR"
                )
            name = _host_key(entry)
            if name is None:
                raise ConfigurationError(
                    f"{ALLOW_SETTING}: {entry!r} is neither an address or CIDR "
                    "(10.0.0.0/8, ::1) nor a host name (tokens.internal)"
                )
            hosts.add(name)
        return cls(networks=tuple(networks), hosts=frozenset(hosts))

    def allows_host(self, host: str) -> bool:
        """Whether `host` is listed by name (then it may resolve to anything)."""
        return _host_key(host) in self.hosts

    def refusal(self, address: Address) -> str | None:
        """Why the guard refuses `address`, or None when it may be reached."""
        if any(address in network for network in self.networks):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                kind, ipv4 = embedded
                reason = self.refusal(ipv4)
                if reason is not None:
                    return f"the {kind} form of {ipv4}, {reason}"
                if kind in ("IPv4-mapped", "NAT64"):
                    # The embedded address is where the packets go, and it may be reached.
                    return None
        return _default_refusal(address)


def _host_key(host: str) -> str | None:
    """A host name as the allow list compares it (lower case, ASCII, no final dot)."""
    name = host.strip().lower()
    name = name[:-1] if name.endswith(".") else name
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not HOST_NAME.fullmatch(name) or name.rsplit(".", 1)[-1].isdigit():
        return None  # a numeric last label would be read as an address, never as a name
    return name


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the host resolves to, through the event loop's `getaddrinfo`."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _refused(method: str, host: str, why: str, *, hint: bool = True) -> EgressRefused:
    """An `EgressRefused` naming the host (never the path, query or userinfo) and the reason."""
    message = f"{method} {host}: refused by the egress guard: {why}"
    if hint:
        message += f"; to allow it, add the host name or address to {ALLOW_SETTING}"
    return EgressRefused(message)


def _explain(host: str, address: Address, reason: str, *, resolved: bool) -> str:
    """`it resolves to 127.0.0.1, a loopback address` (or `is`, for a host that spells it)."""
    if resolved:
        return f"it resolves to {address}, {reason}"
    if str(address) == host:
        return f"{address} is {reason}"
    return f"it is {address}, {reason}"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


# httpx's failures that are raised before any byte of the request is written: no connection
# (refused, no route, a failed TLS handshake), none in time, or none free in the pool.
NEVER_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass
class SendProgress:
    """How far one request got, for telling a failure that provably never reached the upstream
    from one that may have (a rotation-sensitive request may be retried only after the first).

    httpcore reports its steps through the request's `trace` extension: `connect_tcp` and
    `start_tls` before anything is sent, then `send_request_headers`. Without those reports (a
    transport that doesn't trace) a failure after the request was handed over counts as maybe
    sent: the conservative answer.
    """

    handed: bool = False  # given to httpx to send
    traced: bool = False  # httpcore reported a connection step
    sent: bool = False  # the request's first bytes were being written (on some hop)

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace callback."""
        if "send_request_headers" in event:
            self.sent = True
        elif "connect_tcp" in event or "start_tls" in event:
            self.traced = True

    def never_sent(self, exc: BaseException) -> bool:
        """Whether the request provably never left when `exc` ended it."""
        if self.sent:
            return False
        return isinstance(exc, NEVER_SENT_ERRORS) or not self.handed or self.traced


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one TLS client context (certificate checks on, the CA bundle httpx
    trusts): loading the CA bundle costs tens of milliseconds, once instead of per client."""
    return httpx.create_ssl_context()


class Outbound:
    """Sends the requests of runs with one shared client, behind the egress guard."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        egress_allow: str | EgressAllowList = "",
        resolver: Resolver | None = None,
        default_timeout_seconds: float = 30.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        events: Events | None = None,
    ) -> None:
        self.events = events
        # Requests go to the checked IP, and httpcore pools connections by IP: a kept-alive TLS
        # connection verified for one host name could carry the next request for another name
        # at the same address. Refreshes are rare, so a fresh connection each time costs little.
        self._client = client or httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            verify=tls_context(),
        )
        self.allow = (
            egress_allow
            if isinstance(egress_allow, EgressAllowList)
            else EgressAllowList.parse(egress_allow)
        )
        self._resolve = resolver or system_resolver
        self.default_timeout_seconds = default_timeout_seconds
        self.max_response_bytes = max_response_bytes

    async def aclose(self) -> None:
        """Close the shared client (at shutdown)."""
        await self._client.aclose()

    async def send(self, method: str, url: str, **options: Any) -> OutboundResponse:
        """Send one request (see `_send`) and report it as an `UpstreamCall` event."""
        started = time.perf_counter()
        status: int | None = None
        outcome = "ok"
        try:
            response = await self._send(method, url, **options)
            status = response.status
            if status >= 400:
                outcome = "http_error"
            return response
        except RunFailed as exc:
            outcome = OUTCOME_OF_ERROR.get(exc.error_type, "network")
            raise
        finally:
            if self.events is not None:
                try:
                    host = urlsplit(url).hostname or "?"
                except ValueError:
                    host = "?"
                self.events.emit(
                    UpstreamCall(method, host, status, outcome, time.perf_counter() - started)
                )

    async def _send(
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
        destination_check: DestinationCheck | None = None,
    ) -> OutboundResponse:
        """Send one request and read its answer within the timeout, all in all.

        Every failure becomes a domain error: `BindingError` (a request that can't be built),
        `EgressRefused` (a target the egress guard refuses), `UpstreamTimeout`,
        `UpstreamUnreachable`, or `BadUpstreamResponse` (a body that is too large or can't be
        decoded). Redirects are followed only with `follow_redirects`, at most `MAX_REDIRECTS`.
        `destination_check` sees each hop as it would be sent (its origin, and the URL, header
        values and body) and may refuse it before anything is sent.
        """
        check_url(url)
        # Before httpx parses the URL: it rejects some spellings of refused addresses
        # (`0177.0.0.1`), and those must read as refusals, not as typos.
        self._check_literal_host(method, urlsplit(url).hostname or "")
        target = describe_target(method, url)
        timeout = timeout_seconds or self.default_timeout_seconds
        progress = SendProgress()
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
                extensions={"trace": progress.trace},
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
            # by byte must not hold the run (and its lock) longer than the node allows. The
            # deadline covers name resolution and every redirect hop too.
            async with asyncio.timeout(timeout):
                return await self._exchange(
                    request, target, follow_redirects, destination_check, progress
                )
        except RunFailed as exc:
            if not progress.handed:
                # Nothing was handed to httpx yet: a name that did not resolve, a refusal.
                exc.reached_upstream = False
            raise
        except (TimeoutError, httpx.TimeoutException) as exc:
            timed_out = UpstreamTimeout(f"{target}: no answer within {timeout:g} s")
            timed_out.reached_upstream = not progress.never_sent(exc)
            raise timed_out from None
        except httpx.DecodingError:
            raise BadUpstreamResponse(
                f"{target}: the response body could not be decoded (its content-encoding is broken)"
            ) from None
        except (httpx.InvalidURL, UnicodeError):
            # httpx parses the Location of every redirect it receives, followed or not
            # (`http:127.0.0.2/echo`, an IDNA label `xn--`): the upstream's answer is unusable.
            # The location itself is not quoted: an upstream may echo a credential into it.
            raise BadUpstreamResponse(f"{target}: the answer redirects to an invalid URL") from None
        except httpx.RequestError as exc:
            # The class name only: httpx messages can repeat the full URL.
            unreachable = UpstreamUnreachable(f"{target}: connection failed ({type(exc).__name__})")
            unreachable.reached_upstream = not progress.never_sent(exc)
            raise unreachable from None

    async def _exchange(
        self,
        request: httpx.Request,
        target: str,
        follow_redirects: bool,
        destination_check: DestinationCheck | None,
        progress: SendProgress,
    ) -> OutboundResponse:
        """Send the request (and its redirect hops, when asked to) and read the final answer."""
        hops = 0
        while True:
            if destination_check is not None:
                url = request.url
                destination_check(origin(url.scheme, url.host, url.port), wire_texts(request))
            response = await self._send_checked(request, target, progress)
            location = response.headers.get("location")
            if not (follow_redirects and response.status_code in REDIRECT_STATUSES and location):
                return await self._read(response, target)
            # A redirect's body is never read: the next hop is all that matters.
            await response.aclose()
            hops += 1
            if hops > MAX_REDIRECTS:
                raise _refused(
                    request.method,
                    request.url.host,
                    f"more than {MAX_REDIRECTS} redirects",
                    hint=False,
                )
            request = self._redirect(request, response.status_code, location)

    async def _send_checked(
        self, request: httpx.Request, target: str, progress: SendProgress
    ) -> httpx.Response:
        """Check where the request would go, then send it to an address that passed the check."""
        host = request.url.raw_host.decode("ascii")
        if self.allow.allows_host(host):
            progress.handed = True
            return await self._client.send(request, stream=True)
        addresses = await self._checked_addresses(request, target)
        literal = literal_address(host) is not None
        last_error: httpx.ConnectError | None = None
        for address in addresses:
            # Try every checked address in order, as a resolver-driven connect would.
            try:
                progress.handed = True
                return await self._client.send(self._pinned(request, address, literal), stream=True)
            except httpx.ConnectError as exc:
                last_error = exc
        assert last_error is not None  # there is at least one address
        raise last_error

    async def _checked_addresses(self, request: httpx.Request, target: str) -> list[Address]:
        """Every address of the request's host, or `EgressRefused` if the guard refuses any."""
        url = request.url
        host = url.raw_host.decode("ascii")
        literal = literal_address(host)
        if literal is not None:
            addresses = [literal]
        else:
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                answers = await self._resolve(host, port)
                addresses = list(dict.fromkeys(ipaddress.ip_address(a) for a in answers))
            except (OSError, UnicodeError, ValueError):
                addresses = []
            if not addresses:
                raise UpstreamUnreachable(f"{target}: the host name {url.host} did not resolve")
        for address in addresses:
            reason = self.allow.refusal(address)
            if reason is not None:
                why = _explain(host, address, reason, resolved=literal is None)
                raise _refused(request.method, url.host, why)
        return addresses

    def _check_literal_host(self, method: str, host: str) -> None:
        """Refuse a URL whose host spells out a refused address, before anything else."""
        address = literal_address(host)
        if address is None:
            return
        reason = self.allow.refusal(address)
        if reason is not None:
            raise _refused(method, host, _explain(host, address, reason, resolved=False))

    @staticmethod
    def _pinned(request: httpx.Request, address: Address, literal: bool) -> httpx.Request:
        """The request addressed to `address`; `Host` and the TLS server name keep the host name."""
        ip = str(address).split("%", 1)[0]  # a zone id can't go into the URL
        extensions = dict(request.extensions)
        if not literal:
            extensions["sni_hostname"] = request.url.raw_host.decode("ascii")
        return httpx.Request(
            request.method,
            request.url.copy_with(host=ip),
            headers=request.headers,  # its Host header names the host, not the IP
            stream=request.stream,
            extensions=extensions,
        )

    @staticmethod
    def _redirect(request: httpx.Request, status: int, location: str) -> httpx.Request:
        """The next hop of a redirect, as RFC 9110 (and every browser) builds it."""
        try:
            url = request.url.join(location)
        except httpx.InvalidURL:
            url = httpx.URL()
        if url.scheme and url.scheme not in ("http", "https"):
            raise _refused(
                request.method,
                request.url.host,
                f"a redirect to a {url.scheme}: URL (only http and https are allowed)",
                hint=False,
            )
        if not url.host:
            raise BadUpstreamResponse(
                f"{request.method} {request.url.host}: redirect to an invalid URL"
            )
        method = request.method
        if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
            method = "GET"
        headers = request.headers.copy()
        headers.pop("host", None)  # httpx sets it for the new URL
        content: bytes | None = request.content
        if method != request.method:
            content = None
            for name in ("content-type", "content-length", "transfer-encoding"):
                headers.pop(name, None)
        if _origin(url) != _origin(request.url):
            # Credentials were meant for the origin the action named, not for wherever it points.
            headers.pop("authorization", None)
        return httpx.Request(
            method, url, headers=headers, content=content, extensions=request.extensions
        )

    async def _read(self, response: httpx.Response, target: str) -> OutboundResponse:
        """Read at most `max_response_bytes` of the answer."""
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
