"""The egress guard: refused targets are never connected to, allowed ones are pinned.

Refusals are proven on two levels: the HTTP transport under the guard sees no request, and a
loopback server behind the refused address accepts no connection. Public addresses are never
dialled: a test resolver hands them out and an `httpx.MockTransport` answers for them (it also
records where each request was really sent), or the test only asserts a refusal.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.config import Settings
from app.demo.seed import demo_settings
from app.errors import ConfigurationError, EgressRefused, UpstreamUnreachable
from app.outbound import MAX_REDIRECTS, EgressAllowList, Outbound

PUBLIC = "93.184.216.34"  # never dialled: only a test resolver hands it out
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
CANARY = "canary-5e1f"


@pytest.fixture
def finalize_request_sessions() -> None:
    """Most tests here have no app, so no request sessions to finalize."""


# --- helpers ----------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as a loopback upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A bare HTTP/1.1 server on loopback that counts connections and answers from a route table."""

    ssl_context: ssl.SSLContext | None = None
    routes: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {
                name.strip().lower(): value.strip()
                for name, value in (line.split(":", 1) for line in lines if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            path = target.split("?", 1)[0]
            self.requests.append(Seen(method, path, headers, body))
            status, extra = self.routes.get(path, (200, {}))
            payload = b'{"ok": true}'
            head_lines = [
                f"HTTP/1.1 {status} Answer",
                "content-type: application/json",
                f"content-length: {len(payload)}",
                "connection: close",
                *(f"{name}: {value}" for name, value in extra.items()),
            ]
            writer.write(("\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1") + payload)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Any]]:
    """A factory of started `Upstream`s, all stopped at the end of the test."""
    started: list[Upstream] = []

    async def make(ssl_context: ssl.SSLContext | None = None) -> Upstream:
        upstream = Upstream(ssl_context=ssl_context)
        await upstream.start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        await upstream.stop()


@pytest.fixture
async def upstream(upstreams: Callable[..., Any]) -> Upstream:
    """One loopback upstream."""
    server: Upstream = await upstreams()
    return server


class CountingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, counting every request that reaches it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Guarded:
    """An Outbound over a counting transport."""

    outbound: Outbound
    transport: CountingTransport


@pytest.fixture
async def guarded() -> AsyncIterator[Callable[..., Guarded]]:
    """A factory of Outbounds whose transport counts requests; all closed after the test."""
    made: list[Outbound] = []

    def make(allow: str = "", resolver: Any = None) -> Guarded:
        transport = CountingTransport()
        client = httpx.AsyncClient(transport=transport, trust_env=False)
        outbound = Outbound(client, egress_allow=allow, resolver=resolver)
        made.append(outbound)
        return Guarded(outbound, transport)

    yield make
    for outbound in made:
        await outbound.aclose()


class Resolver:
    """A test resolver: fixed answers per host (a list of answers is served call by call)."""

    def __init__(self, answers: dict[str, Sequence[str] | list[Sequence[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        answer = self.answers.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if answer and isinstance(answer[0], list | tuple):
            series: list[Sequence[str]] = answer  # type: ignore[assignment]
            return series[min(len(self.calls_for(host)), len(series)) - 1]
        return answer  # type: ignore[return-value]

    def calls_for(self, host: str) -> list[str]:
        """The calls made for `host`."""
        return [call for call in self.calls if call == host]


@dataclass
class Recorded:
    """A request as the mock transport got it: where it really went, and for which host."""

    url: httpx.URL
    host_header: str | None
    sni_hostname: str | None
    method: str
    authorization: str | None
    body: bytes


def mock_outbound(
    resolver: Resolver,
    answer: Callable[[httpx.Request], httpx.Response] | None = None,
    allow: str = "",
) -> tuple[Outbound, list[Recorded]]:
    """An Outbound over a MockTransport that records requests (nothing leaves the process)."""
    recorded: list[Recorded] = []

    def handler(request: httpx.Request) -> httpx.Response:
        recorded.append(
            Recorded(
                url=request.url,
                host_header=request.headers.get("host"),
                sni_hostname=request.extensions.get("sni_hostname"),
                method=request.method,
                authorization=request.headers.get("authorization"),
                body=request.content,
            )
        )
        return answer(request) if answer else httpx.Response(200, json={"ok": True})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Outbound(client, egress_allow=allow, resolver=resolver), recorded


# --- refusals ---------------------------------------------------------------------------------

# Hosts that spell a loopback address; the upstream on 127.0.0.1 must never see a connection.
LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.0.0.1.",
    "127.1",
    "0x7f000001",
    "0x7f.1",
    "2130706433",
    "0177.0.0.1",
    "localhost",
    "[::ffff:127.0.0.1]",
    "[0:0:0:0:0:ffff:7f00:1]",
    "[::ffff:7f00:1]",
    "[::1]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::]",
    "0",
    "0.0.0.0",
    "[::]",
]

# Other refused addresses, with a word the reason must contain. None of them is ever dialled.
REFUSED_ADDRESSES = [
    ("169.254.169.254", "link-local"),
    ("[fe80::1]", "link-local"),
    ("[fe80::1%25eth0]", "link-local"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "not a public address"),
    ("[fc00::1]", "private"),
    ("[fd12:3456::1]", "private"),
    ("224.0.0.1", "multicast"),
    ("[ff02::1]", "multicast"),
    ("255.255.255.255", "reserved"),
    ("240.0.0.1", "reserved"),
    ("0.1.2.3", "private"),
    ("[::ffff:169.254.169.254]", "IPv4-mapped form of 169.254.169.254"),
    ("[::ffff:10.0.0.1]", "IPv4-mapped form of 10.0.0.1"),
    ("[64:ff9b::a9fe:a9fe]", "NAT64 form of 169.254.169.254"),
    ("[2002:a9fe:a9fe::]", "6to4 form of 169.254.169.254"),
    ("0xa9fea9fe", "link-local"),
]


class TestRefusedTargets:
    @pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
    @pytest.mark.parametrize("scheme", ["http", "https"])
    async def test_loopback_in_any_spelling_is_refused_without_a_connection(
        self, guarded: Callable[..., Guarded], upstream: Upstream, host: str, scheme: str
    ) -> None:
        guard = guarded()

        with pytest.raises(EgressRefused) as raised:
            await guard.outbound.send("GET", f"{scheme}://{host}:{upstream.port}/token")

        assert "TOKENFARM_EGRESS_ALLOW" in raised.value.message
        assert guard.transport.sent == []
        assert upstream.connections == 0

    @pytest.mark.parametrize(("host", "reason"), REFUSED_ADDRESSES)
    async def test_internal_address_is_refused_naming_why(
        self, guarded: Callable[..., Guarded], host: str, reason: str
    ) -> None:
        guard = guarded()

        with pytest.raises(EgressRefused) as raised:
            await guard.outbound.send("POST", f"http://{host}/latest/meta-data/", data={"a": "b"})

        assert reason in raised.value.message
        assert "TOKENFARM_EGRESS_ALLOW" in raised.value.message
        assert guard.transport.sent == []

    async def test_refusal_is_permanent_so_never_retried(
        self, guarded: Callable[..., Guarded]
    ) -> None:
        with pytest.raises(EgressRefused) as raised:
            await guarded().outbound.send("GET", "http://169.254.169.254/")

        assert raised.value.error_class == "permanent"
        assert raised.value.kind == "network"
        assert raised.value.status_code == 502
        assert raised.value.to_body()["type"] == "egress_refused"

    @pytest.mark.parametrize(
        "url",
        [
            f"http://admin:{CANARY}@169.254.169.254/latest/{CANARY}/?token={CANARY}",
            f"http://169.254.169.254/api;key={CANARY}/x?{CANARY}",
            f"http://u:{CANARY}@0177.0.0.1/{CANARY}",
        ],
    )
    async def test_message_names_the_host_never_path_query_or_userinfo(
        self, guarded: Callable[..., Guarded], url: str
    ) -> None:
        with pytest.raises(EgressRefused) as raised:
            await guarded().outbound.send("GET", url)

        message = raised.value.message
        assert CANARY not in message
        assert "admin" not in message
        assert "169.254.169.254" in message or "0177.0.0.1" in message

    async def test_public_address_passes_the_check(self) -> None:
        resolver = Resolver({})
        outbound, recorded = mock_outbound(resolver)

        answer = await outbound.send("GET", f"http://{PUBLIC}/x")

        assert answer.status == 200
        assert [r.url.host for r in recorded] == [PUBLIC]
        assert resolver.calls == []  # an address is not looked up


# --- DNS: every address is checked, the checked one is used -------------------------------------


class TestResolution:
    async def test_any_refused_address_refuses_the_host(
        self, guarded: Callable[..., Guarded]
    ) -> None:
        resolver = Resolver({"mixed.example": [PUBLIC, "127.0.0.1"]})
        guard = guarded(resolver=resolver)

        with pytest.raises(EgressRefused) as raised:
            await guard.outbound.send("GET", "http://mixed.example/token")

        assert "mixed.example" in raised.value.message
        assert "resolves to 127.0.0.1, a loopback address" in raised.value.message
        assert guard.transport.sent == []

    async def test_name_resolving_to_loopback_is_refused_without_a_connection(
        self, guarded: Callable[..., Guarded], upstream: Upstream
    ) -> None:
        resolver = Resolver({"tokens.example": ["127.0.0.1"]})
        guard = guarded(resolver=resolver)

        with pytest.raises(EgressRefused):
            await guard.outbound.send("GET", f"http://tokens.example:{upstream.port}/")

        assert guard.transport.sent == []
        assert upstream.connections == 0

    async def test_request_is_pinned_to_the_checked_address(self) -> None:
        resolver = Resolver({"tokens.example": [PUBLIC]})
        outbound, recorded = mock_outbound(resolver)

        await outbound.send("POST", "https://tokens.example:8443/oauth/token?x=1", data={"a": "b"})

        [sent] = recorded
        assert sent.url.host == PUBLIC
        assert sent.url.port == 8443
        assert sent.url.path == "/oauth/token"
        assert sent.url.query == b"x=1"
        assert sent.host_header == "tokens.example:8443"
        assert sent.sni_hostname == "tokens.example"
        assert sent.body == b"a=b"
        assert resolver.calls == ["tokens.example"]

    async def test_ipv6_answer_is_pinned_in_brackets(self) -> None:
        outbound, recorded = mock_outbound(Resolver({"v6.example": [PUBLIC_V6]}))

        await outbound.send("GET", "http://v6.example/")

        assert recorded[0].url.host == PUBLIC_V6
        assert recorded[0].host_header == "v6.example"

    async def test_rebinding_answer_never_reaches_the_connection(self) -> None:
        # The name answers a public address first, then loopback: each request uses the
        # address it checked, so the second one is refused instead of being sent.
        resolver = Resolver({"rebind.example": [[PUBLIC], ["127.0.0.1"]]})
        outbound, recorded = mock_outbound(resolver)

        await outbound.send("GET", "http://rebind.example/")
        with pytest.raises(EgressRefused, match=r"resolves to 127\.0\.0\.1"):
            await outbound.send("GET", "http://rebind.example/")

        assert [r.url.host for r in recorded] == [PUBLIC]
        assert resolver.calls == ["rebind.example", "rebind.example"]

    async def test_next_checked_address_is_tried_when_one_refuses_the_connection(self) -> None:
        resolver = Resolver({"two.example": [PUBLIC_V6, PUBLIC]})

        def answer(request: httpx.Request) -> httpx.Response:
            if request.url.host == PUBLIC_V6:
                raise httpx.ConnectError("network is unreachable", request=request)
            return httpx.Response(200)

        outbound, recorded = mock_outbound(resolver, answer)

        response = await outbound.send("GET", "http://two.example/")

        assert response.status == 200
        assert [r.url.host for r in recorded] == [PUBLIC_V6, PUBLIC]
        assert resolver.calls == ["two.example"]

    async def test_name_that_does_not_resolve_is_unreachable(self) -> None:
        outbound, recorded = mock_outbound(Resolver({}))

        with pytest.raises(UpstreamUnreachable, match="did not resolve") as raised:
            await outbound.send("GET", f"http://nowhere.example/?k={CANARY}")

        assert CANARY not in raised.value.message
        assert recorded == []

    async def test_system_resolver_checks_localhost(
        self, guarded: Callable[..., Guarded], upstream: Upstream
    ) -> None:
        guard = guarded()

        with pytest.raises(EgressRefused, match="localhost"):
            await guard.outbound.send("GET", f"http://localhost:{upstream.port}/")

        assert upstream.connections == 0


class TestTlsKeepsTheHostName:
    """Pinned to an IP, the TLS handshake still names (and verifies) the host."""

    @staticmethod
    def certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
        """A self-signed certificate for `name` (no IP in it) and its key."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

    @pytest.fixture
    def tls(self, tmp_path: Path) -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext, list[str]]]:
        """A server context for tokens.example (recording SNI) and a client that trusts it."""
        cert, key = self.certificate(tmp_path, "tokens.example")
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cert, key)
        names: list[str] = []

        def remember(_: Any, name: str | None, __: Any) -> None:
            names.append(name or "")

        server.sni_callback = remember
        client = ssl.create_default_context(cafile=str(cert))
        yield server, client, names

    async def test_certificate_is_verified_for_the_host_name_not_the_ip(
        self,
        upstreams: Callable[..., Any],
        tls: tuple[ssl.SSLContext, ssl.SSLContext, list[str]],
    ) -> None:
        server_context, client_context, names = tls
        upstream: Upstream = await upstreams(server_context)
        resolver = Resolver({"tokens.example": ["127.0.0.1"]})
        client = httpx.AsyncClient(verify=client_context, trust_env=False)
        outbound = Outbound(client, egress_allow="127.0.0.0/8", resolver=resolver)
        try:
            answer = await outbound.send("GET", f"https://tokens.example:{upstream.port}/token")
        finally:
            await outbound.aclose()

        assert answer.status == 200
        assert names == ["tokens.example"]
        assert upstream.requests[0].headers["host"] == f"tokens.example:{upstream.port}"
        assert resolver.calls == ["tokens.example"]

    async def test_certificate_of_another_host_fails_the_handshake(
        self,
        upstreams: Callable[..., Any],
        tls: tuple[ssl.SSLContext, ssl.SSLContext, list[str]],
    ) -> None:
        server_context, client_context, _ = tls
        upstream: Upstream = await upstreams(server_context)
        resolver = Resolver({"other.example": ["127.0.0.1"]})
        client = httpx.AsyncClient(verify=client_context, trust_env=False)
        outbound = Outbound(client, egress_allow="127.0.0.0/8", resolver=resolver)
        try:
            with pytest.raises(UpstreamUnreachable, match="connection failed"):
                await outbound.send("GET", f"https://other.example:{upstream.port}/token")
        finally:
            await outbound.aclose()

        assert upstream.requests == []


# --- redirects --------------------------------------------------------------------------------


class TestRedirects:
    async def test_redirect_is_the_answer_without_opt_in(
        self, guarded: Callable[..., Guarded], upstream: Upstream
    ) -> None:
        upstream.routes["/start"] = (302, {"location": "http://169.254.169.254/latest/meta-data/"})
        guard = guarded(allow="127.0.0.0/8")

        answer = await guard.outbound.send("GET", f"{upstream.url}/start")

        assert answer.status == 302
        assert answer.headers["location"].startswith("http://169.254.169.254/")
        assert [seen.path for seen in upstream.requests] == ["/start"]
        assert len(guard.transport.sent) == 1

    async def test_allowed_chain_is_followed_with_opt_in(
        self, guarded: Callable[..., Guarded], upstreams: Callable[..., Any]
    ) -> None:
        first: Upstream = await upstreams()
        second: Upstream = await upstreams()
        first.routes["/a"] = (307, {"location": f"{second.url}/b"})
        second.routes["/b"] = (308, {"location": "/c"})
        guard = guarded(allow="127.0.0.0/8")

        answer = await guard.outbound.send(
            "POST", f"{first.url}/a", json={"grant": "x"}, follow_redirects=True
        )

        assert answer.status == 200
        assert answer.content == b'{"ok": true}'
        assert [(s.method, s.path) for s in first.requests] == [("POST", "/a")]
        assert [(s.method, s.path) for s in second.requests] == [("POST", "/b"), ("POST", "/c")]
        assert {s.body for s in [*first.requests, *second.requests]} == {b'{"grant":"x"}'}
        assert second.requests[0].headers["host"] == f"127.0.0.1:{second.port}"

    async def test_each_hop_is_resolved_checked_and_pinned(self) -> None:
        resolver = Resolver(
            {"a.example": [PUBLIC], "b.example": [PUBLIC_V6], "c.example": ["8.8.8.8"]}
        )
        hops = {
            "a.example": "https://b.example/two",
            "b.example": "http://c.example:8080/three",
        }

        def answer(request: httpx.Request) -> httpx.Response:
            host = request.headers["host"].split(":")[0]
            if host in hops:
                return httpx.Response(302, headers={"location": hops[host]})
            return httpx.Response(200, json={"done": True})

        outbound, recorded = mock_outbound(resolver, answer)

        response = await outbound.send("GET", "http://a.example/one", follow_redirects=True)

        assert response.status == 200
        assert resolver.calls == ["a.example", "b.example", "c.example"]
        assert [(r.url.host, r.host_header, r.sni_hostname) for r in recorded] == [
            (PUBLIC, "a.example", "a.example"),
            (PUBLIC_V6, "b.example", "b.example"),
            ("8.8.8.8", "c.example:8080", "c.example"),
        ]

    async def test_redirect_to_the_metadata_address_is_refused(
        self, guarded: Callable[..., Guarded], upstream: Upstream
    ) -> None:
        target = f"http://169.254.169.254/latest/meta-data/iam/?token={CANARY}"
        upstream.routes["/start"] = (302, {"location": target})
        guard = guarded(allow="127.0.0.0/8")

        with pytest.raises(EgressRefused) as raised:
            await guard.outbound.send("GET", f"{upstream.url}/start", follow_redirects=True)

        assert "169.254.169.254 is a link-local address" in raised.value.message
        assert CANARY not in raised.value.message
        assert "meta-data" not in raised.value.message
        assert len(guard.transport.sent) == 1

    async def test_host_allowed_by_name_cannot_redirect_to_loopback(
        self, guarded: Callable[..., Guarded], upstreams: Callable[..., Any]
    ) -> None:
        first: Upstream = await upstreams()
        internal: Upstream = await upstreams()
        first.routes["/start"] = (302, {"location": f"{internal.url}/admin"})
        guard = guarded(allow="localhost")

        with pytest.raises(EgressRefused, match=r"127\.0\.0\.1 is a loopback address"):
            await guard.outbound.send(
                "GET", f"http://localhost:{first.port}/start", follow_redirects=True
            )

        assert len(first.requests) == 1
        assert internal.connections == 0

    async def test_public_host_cannot_redirect_to_a_name_that_resolves_internally(self) -> None:
        resolver = Resolver({"a.example": [PUBLIC], "internal.example": ["10.1.2.3"]})
        outbound, recorded = mock_outbound(
            resolver,
            lambda request: httpx.Response(302, headers={"location": "http://internal.example/"}),
        )

        with pytest.raises(EgressRefused, match=r"resolves to 10\.1\.2\.3, a private address"):
            await outbound.send("GET", "http://a.example/", follow_redirects=True)

        assert [r.url.host for r in recorded] == [PUBLIC]

    @pytest.mark.parametrize(
        ("status", "method", "next_method", "body_kept"),
        [
            (301, "POST", "GET", False),
            (302, "POST", "GET", False),
            (303, "POST", "GET", False),
            (303, "PUT", "GET", False),
            (307, "POST", "POST", True),
            (308, "POST", "POST", True),
            (302, "PUT", "PUT", True),
            (301, "PATCH", "PATCH", True),
        ],
    )
    async def test_method_and_body_follow_rfc_9110(
        self,
        guarded: Callable[..., Guarded],
        upstream: Upstream,
        status: int,
        method: str,
        next_method: str,
        body_kept: bool,
    ) -> None:
        upstream.routes["/start"] = (status, {"location": "/next"})
        guard = guarded(allow="127.0.0.0/8")

        await guard.outbound.send(
            method, f"{upstream.url}/start", data={"grant_type": "x"}, follow_redirects=True
        )

        first, second = upstream.requests
        assert (first.method, first.body) == (method, b"grant_type=x")
        assert second.method == next_method
        if body_kept:
            assert second.body == b"grant_type=x"
            assert second.headers["content-type"] == "application/x-www-form-urlencoded"
        else:
            assert second.body == b""
            assert "content-type" not in second.headers

    async def test_authorization_is_dropped_when_the_origin_changes(
        self, guarded: Callable[..., Guarded], upstreams: Callable[..., Any]
    ) -> None:
        first: Upstream = await upstreams()
        other: Upstream = await upstreams()
        first.routes["/start"] = (307, {"location": "/same"})
        first.routes["/same"] = (307, {"location": f"{other.url}/elsewhere"})
        guard = guarded(allow="127.0.0.0/8")

        await guard.outbound.send(
            "POST",
            f"{first.url}/start",
            auth=("client", CANARY),
            headers={"X-Trace": "kept"},
            follow_redirects=True,
        )

        assert [s.path for s in first.requests] == ["/start", "/same"]
        assert all("authorization" in s.headers for s in first.requests)
        [elsewhere] = other.requests
        assert "authorization" not in elsewhere.headers
        assert elsewhere.headers["x-trace"] == "kept"
        assert elsewhere.headers["host"] == f"127.0.0.1:{other.port}"

    async def test_more_than_five_redirects_are_refused(
        self, guarded: Callable[..., Guarded], upstream: Upstream
    ) -> None:
        upstream.routes["/loop"] = (302, {"location": "/loop"})
        guard = guarded(allow="127.0.0.0/8")

        with pytest.raises(EgressRefused, match=f"more than {MAX_REDIRECTS} redirects"):
            await guard.outbound.send("GET", f"{upstream.url}/loop", follow_redirects=True)

        assert len(upstream.requests) == MAX_REDIRECTS + 1

    @pytest.mark.parametrize(
        "location", ["file:///etc/passwd", "ftp://files.example/x", "gopher://x/"]
    )
    async def test_redirect_to_another_scheme_is_refused(
        self, guarded: Callable[..., Guarded], upstream: Upstream, location: str
    ) -> None:
        upstream.routes["/start"] = (302, {"location": location})
        guard = guarded(allow="127.0.0.0/8")

        with pytest.raises(EgressRefused, match="only http and https"):
            await guard.outbound.send("GET", f"{upstream.url}/start", follow_redirects=True)

        assert len(guard.transport.sent) == 1


# --- the allow list ---------------------------------------------------------------------------


class TestAllowList:
    async def test_cidr_opens_loopback_over_plain_http(
        self, guarded: Callable[..., Guarded], upstream: Upstream
    ) -> None:
        guard = guarded(allow="127.0.0.0/8,::1")

        answer = await guard.outbound.send("GET", f"{upstream.url}/token")

        assert answer.status == 200
        assert upstream.connections == 1

    async def test_odd_spelling_is_opened_as_the_address_it_is(
        self, guarded: Callable[..., Guarded], upstream: Upstream
    ) -> None:
        guard = guarded(allow="127.0.0.1")

        answer = await guard.outbound.send("GET", f"http://0x7f000001:{upstream.port}/")

        assert answer.status == 200
        assert str(guard.transport.sent[0].url.host) == "127.0.0.1"
        assert upstream.requests[0].headers["host"] == f"0x7f000001:{upstream.port}"

    async def test_host_name_opens_its_host_whatever_it_resolves_to(
        self, guarded: Callable[..., Guarded], upstream: Upstream
    ) -> None:
        guard = guarded(allow="LocalHost.")

        answer = await guard.outbound.send("GET", f"http://localhost:{upstream.port}/token")

        assert answer.status == 200
        assert upstream.requests[0].headers["host"] == f"localhost:{upstream.port}"

    async def test_host_name_entry_opens_only_that_name(
        self, guarded: Callable[..., Guarded], upstream: Upstream
    ) -> None:
        resolver = Resolver({"other.internal": ["127.0.0.1"]})
        guard = guarded(allow="tokens.internal", resolver=resolver)

        with pytest.raises(EgressRefused):
            await guard.outbound.send("GET", f"http://other.internal:{upstream.port}/")

        assert upstream.connections == 0

    def test_cidr_covers_the_mapped_forms_of_its_addresses(self) -> None:
        allow = EgressAllowList.parse("127.0.0.0/8")

        assert allow.refusal(ipaddress.ip_address("::ffff:127.0.0.1")) is None
        assert allow.refusal(ipaddress.ip_address("::ffff:10.0.0.1")) is not None
        assert allow.refusal(ipaddress.ip_address("::1")) == "a loopback address"

    def test_entries_are_read_with_spaces_and_empty_parts(self) -> None:
        allow = EgressAllowList.parse(
            " 127.0.0.0/8, ::1 ,,tokens.internal, 10.1.2.3,bücher.example"
        )

        assert [str(n) for n in allow.networks] == ["127.0.0.0/8", "::1/128", "10.1.2.3/32"]
        assert allow.hosts == {"tokens.internal", "xn--bcher-kva.example"}
        assert EgressAllowList.parse("") == EgressAllowList()

    @pytest.mark.parametrize(
        "entry",
        [
            "10.0.0.1/8",
            "::1/129",
            "300.1.2.3",
            "http://tokens.internal",
            "127.1",
            "0x7f000001",
            "tokens internal",
            "-bad.example",
            "a..b",
            "*.example.com",
        ],
    )
    def test_invalid_entry_stops_start_up_naming_it(
        self, monkeypatch: pytest.MonkeyPatch, entry: str
    ) -> None:
        monkeypatch.setenv("TOKENFARM_EGRESS_ALLOW", f"127.0.0.0/8,{entry}")

        with pytest.raises(ConfigurationError) as raised:
            Settings(_env_file=None)  # type: ignore[call-arg]

        assert repr(entry) in raised.value.message
        assert raised.value.message.startswith("TOKENFARM_EGRESS_ALLOW: ")
        with pytest.raises(ConfigurationError):
            Outbound(egress_allow=entry)

    def test_valid_setting_is_read_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TOKENFARM_EGRESS_ALLOW", "127.0.0.0/8,::1,tokens.internal")

        assert Settings(_env_file=None).egress_allow == "127.0.0.0/8,::1,tokens.internal"  # type: ignore[call-arg]

    def test_demo_opens_its_loopback_token_server(self) -> None:
        base = Settings(_env_file=None, egress_allow="10.0.0.0/8")  # type: ignore[call-arg]

        demo = demo_settings(base)

        assert demo.egress_allow == "10.0.0.0/8,127.0.0.1"
        allow = EgressAllowList.parse(demo.egress_allow)
        assert allow.refusal(ipaddress.ip_address("127.0.0.1")) is None
        assert allow.refusal(ipaddress.ip_address("127.0.0.2")) is not None


# --- through the API --------------------------------------------------------------------------


class TestThroughTheApi:
    async def test_metadata_url_fails_the_run_with_502_and_is_recorded(
        self, client: httpx.AsyncClient
    ) -> None:
        action = [
            {"type": "web_request", "url": "http://169.254.169.254/latest/meta-data/"},
        ]
        created = await client.post(
            "/v1/services",
            json={
                "slug": "metadata",
                "name": "Metadata",
                "endpoints": [{"readable_id": "grab", "name": "Grab", "action": action}],
            },
        )
        assert created.status_code == 201, created.text

        response = await client.get("/api/services/metadata/grab")

        assert response.status_code == 502, response.text
        body = response.json()
        assert body["status"] == "failed"
        error = body["error"]
        assert error["type"] == "egress_refused"
        assert error["error_class"] == "permanent"
        assert "169.254.169.254 is a link-local address" in error["message"]
        assert "TOKENFARM_EGRESS_ALLOW" in error["message"]
        assert "meta-data" not in error["message"]
        assert "attempts" not in error  # refused once, never retried

        listing = await client.get("/v1/runs", params={"service": "metadata", "status": "failed"})
        assert listing.status_code == 200, listing.text
        assert [run["id"] for run in listing.json()] == [body["run_id"]]
        detail = await client.get(f"/v1/runs/{body['run_id']}")
        assert detail.status_code == 200, detail.text
        run = detail.json()
        assert run["error_type"] == "egress_refused"
        assert run["http_status"] == 502
        failing = [entry for entry in run["trace"] if entry["outcome"] == "failed"]
        assert failing[-1]["error"]["type"] == "egress_refused"
        assert "retries" not in failing[-1]
