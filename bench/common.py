"""Shared set-up of the HTTP benchmarks (refresh, value read, coalescing).

Each benchmark gets a scratch database (a SQLite file in a temporary directory, or a PostgreSQL
database created through `postgres` and dropped at the end), its own keys, a loopback token
server and `tokenfarm serve --no-migrate` as real processes, seeded through the HTTP API.

Run as a script, this module is also what those child processes execute:

    python bench/common.py token-server --port P [--latency-ms L]   # app/demo/token_server.py
    python bench/common.py minimal-app --port P                      # the value-read baseline
    python bench/common.py load --url U [--header H] [--connections C] [--seconds S]

The token server runs in a process of its own so that the benchmark's client, which shares the
bench process, never competes with it for the GIL; `/_bench/stats` reports how many token
requests it saw and `POST /_bench/refresh-token` starts a new refresh-token family.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

Backend = Literal["sqlite", "postgresql"]

ROOT = Path(__file__).resolve().parent.parent
RATE_LIMITS = [
    f"{route}_PER_{by}"
    for route in ("REFRESH", "ENDPOINT", "VALUE_READ")
    for by in ("CREDENTIAL", "ADDRESS")
]
PG_SERVER = os.environ.get("TOKENFARM_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
ENVIRONMENT = "test"
OWNER_EMAIL = "bench-owner@example.com"
OWNER_PASSWORD = "bench-owner-password-" + "x" * 12
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-client-secret"  # noqa: S105 -- the loopback token server's test client
STARTUP_SECONDS = 60.0


# --- figures --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile `p` (0-100) of `values`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    """Seconds as milliseconds, two decimals."""
    return f"{seconds * 1000:.2f} ms"


def verdict(ok: bool) -> str:
    """How a target reads in the report."""
    return "yes" if ok else "NO"


def print_block(title: str, rows: Sequence[tuple[str, str]]) -> None:
    """One benchmark's figures as an aligned block."""
    width = max(len(name) for name, _ in rows)
    print(f"\n== {title} ==")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    sys.stdout.flush()


def machine_note() -> str:
    """Cores, load and interpreter: figures mean little without them."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores, load average {load} at start, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it); the limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


# --- child processes ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChildProcess:
    """A child process whose stderr goes to a file; stopped by its own pid only."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> None:
        """Start it (stdout is discarded: uvicorn's access log goes there)."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 -- our own interpreter and arguments
                self.argv,
                env=self.env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The end of its stderr."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def wait_until_answering(self, url: str) -> None:
        """Poll `url` until it answers (any status); fail if the process dies or never does."""
        deadline = time.monotonic() + STARTUP_SECONDS
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                try:
                    await client.get(url)
                    return
                except httpx.TransportError:
                    if not self.alive():
                        raise RuntimeError(
                            f"{self.argv[2:4]} exited early:\n{self.log_tail()}"
                        ) from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{url} did not answer in {STARTUP_SECONDS:g} s"
                        ) from None
                    await asyncio.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; always reaped."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def script_argv(command: str, *args: str) -> list[str]:
    """This module as a child process running `command`."""
    return [sys.executable, str(Path(__file__).resolve()), command, *args]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment without any TOKENFARM_* of the caller, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENFARM_")}
    env.update(extra or {})
    return env


# --- the database ---------------------------------------------------------------------------------


async def _pg_admin(sql: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def scratch_database(backend: Backend, workdir: Path) -> AsyncIterator[str]:
    """The URL of an empty database: a SQLite file in `workdir`, or a PostgreSQL database that
    is dropped afterwards (`tokenfarm init` migrates it)."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    name = f"tokenfarm_bench_{uuid.uuid4().hex[:10]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the stack: token server + tokenfarm ----------------------------------------------------------


@dataclass
class Stack:
    """A running token server and tokenfarm on one scratch database."""

    backend: Backend
    database_url: str
    encryption_key: str
    workdir: Path
    token_server_url: str
    base_url: str
    processes: list[ChildProcess] = field(default_factory=list)

    @property
    def token_url(self) -> str:
        """The token endpoint the actions call."""
        return f"{self.token_server_url}/oauth/token"

    async def token_requests(self) -> int:
        """Token requests the token server has seen so far."""
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{self.token_server_url}/_bench/stats")
            response.raise_for_status()
            return int(response.json()["token_requests"])

    async def new_refresh_token(self) -> str:
        """The first refresh token of a new family of the bench client."""
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{self.token_server_url}/_bench/refresh-token")
            response.raise_for_status()
            return str(response.json()["refresh_token"])

    def start_child(self, name: str, argv: list[str], env: dict[str, str]) -> ChildProcess:
        """Start a child process that is stopped with the stack."""
        child = ChildProcess(argv, env, self.workdir / f"{name}.log")
        child.start(self.workdir)
        self.processes.append(child)
        return child


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> str:
    """`tokenfarm ARGS` in a fresh interpreter; its stdout, or an error with its stderr."""
    done = subprocess.run(  # noqa: S603 -- our own interpreter and arguments
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tokenfarm {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


@contextlib.asynccontextmanager
async def tokenfarm_stack(backend: Backend, *, latency_ms: float = 0.0) -> AsyncIterator[Stack]:
    """Scratch database, keys, `tokenfarm init`, the token server and `tokenfarm serve`."""
    from cryptography.fernet import Fernet

    with tempfile.TemporaryDirectory(prefix=f"tokenfarm-bench-{backend}-") as tmp:
        workdir = Path(tmp)
        async with scratch_database(backend, workdir) as url:
            key = Fernet.generate_key().decode()
            env = child_env(
                {
                    "TOKENFARM_DATABASE_URL": url,
                    "TOKENFARM_ENCRYPTION_KEYS": key,
                    "TOKENFARM_JWT_SECRET": secrets.token_urlsafe(48),
                    "TOKENFARM_ENVIRONMENT": ENVIRONMENT,
                    "TOKENFARM_DATA_DIR": str(workdir / "data"),
                    # The token server listens on loopback, which the egress guard refuses.
                    "TOKENFARM_EGRESS_ALLOW": "127.0.0.0/8",
                    "TOKENFARM_SCHEDULER_ENABLED": "false",
                    "TOKENFARM_LOG_LEVEL": "WARNING",
                    # Counted as in production (their cost is in the figures), never reached.
                    **{f"TOKENFARM_RATE_LIMIT_{name}": "1000000000/minute" for name in RATE_LIMITS},
                }
            )
            run_cli(
                "init",
                "--owner-email",
                OWNER_EMAIL,
                "--owner-password",
                OWNER_PASSWORD,
                env=env,
                cwd=workdir,
            )
            token_port, port = free_port(), free_port()
            stack = Stack(
                backend=backend,
                database_url=url,
                encryption_key=key,
                workdir=workdir,
                token_server_url=f"http://127.0.0.1:{token_port}",
                base_url=f"http://127.0.0.1:{port}",
            )
            try:
                token_server = stack.start_child(
                    "token-server",
                    script_argv(
                        "token-server", "--port", str(token_port), "--latency-ms", str(latency_ms)
                    ),
                    child_env(),
                )
                serve = stack.start_child(
                    "tokenfarm",
                    [sys.executable, "-m", "app.cli", "serve", "--no-migrate", "--port", str(port)],
                    env,
                )
                await token_server.wait_until_answering(f"{stack.token_server_url}/_bench/stats")
                await serve.wait_until_answering(f"{stack.base_url}/healthz")
                yield stack
            finally:
                for child in reversed(stack.processes):
                    child.stop()
                warnings = [
                    line
                    for child in stack.processes
                    for line in child.log_tail(200).splitlines()
                    if " ERROR " in line or "Traceback" in line
                ]
                if warnings:
                    print(f"  ({len(warnings)} error line(s) in the child logs, the last:)")
                    for line in warnings[-3:]:
                        print(f"    {line}")


# --- seeding through the API ----------------------------------------------------------------------


async def owner_client(stack: Stack) -> httpx.AsyncClient:
    """An httpx client of tokenfarm logged in as the owner (close it when done)."""
    client = httpx.AsyncClient(base_url=stack.base_url, timeout=30)
    response = await client.post(
        "/auth/token", data={"username": OWNER_EMAIL, "password": OWNER_PASSWORD}
    )
    response.raise_for_status()
    client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
    return client


async def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 300:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text[:500]}"
        )
    return response.json() if response.content else {}


async def create_secret(
    client: httpx.AsyncClient, name: str, value: Any = None, **fields: Any
) -> None:
    """Create a secret (with a first value when given)."""
    body: dict[str, Any] = {"name": name, **fields}
    if value is not None:
        body["value"] = value
    await _ok(await client.post("/v1/secrets", json=body))


def canonical_action(token_url: str) -> list[dict[str, Any]]:
    """The canonical refresh of docs/first-refresh.md, pointed at `token_url`."""
    import copy

    from app.pipeline.schemas import CANONICAL_ACTION_EXAMPLE

    action = copy.deepcopy(CANONICAL_ACTION_EXAMPLE)
    action[1]["url"] = token_url
    return action


async def seed_canonical_refresh(
    client: httpx.AsyncClient, stack: Stack, *, enable_log: bool = True
) -> None:
    """CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, ACCESS_TOKEN, a service `oauth` running the
    canonical refresh, and ACCESS_TOKEN bound to it (as tests/conftest.py `setup_oauth` does)."""
    await create_secret(client, "CLIENT_ID", CLIENT_ID, environment_specific=False)
    await create_secret(client, "CLIENT_SECRET", CLIENT_SECRET, environment_specific=False)
    await create_secret(client, "REFRESH_TOKEN", await stack.new_refresh_token())
    await create_secret(client, "ACCESS_TOKEN")
    await _ok(
        await client.post(
            "/v1/services",
            json={
                "slug": "oauth",
                "name": "OAuth",
                "endpoints": [
                    {
                        "readable_id": "refresh-token",
                        "name": "Refresh",
                        "methods": ["GET", "POST"],
                        "enable_log": enable_log,
                        "action": canonical_action(stack.token_url),
                    }
                ],
            },
        )
    )
    await _ok(
        await client.patch(
            "/v1/secrets/ACCESS_TOKEN", json={"refresh_endpoint": "oauth/refresh-token"}
        )
    )


REFRESHER_PERMISSIONS = [
    "services.run:oauth",
    "secrets.update_from_service:ACCESS_TOKEN",
    "secrets.update_from_service:REFRESH_TOKEN",
]
"""What a caller of `/refresh/ACCESS_TOKEN` needs (and to join a run in flight)."""


async def create_api_key(client: httpx.AsyncClient, account: str, permissions: list[str]) -> str:
    """A service account holding exactly `permissions` (through a role of its own); its key."""
    role = f"{account}-role"
    await _ok(await client.post("/v1/roles", json={"name": role, "permissions": permissions}))
    await _ok(await client.post("/v1/service-accounts", json={"name": account, "roles": [role]}))
    created = await _ok(
        await client.post(f"/v1/service-accounts/{account}/api-keys", json={"name": "bench"})
    )
    return str(created["key"])


# --- a raw HTTP/1.1 client ------------------------------------------------------------------------


class RawConnection:
    """One keep-alive HTTP/1.1 connection over asyncio streams: about as cheap as a Python
    client gets, so that what is measured is the server (httpx costs ~0.3 ms per request)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def open(cls, base_url: str) -> RawConnection:
        """Connect to `base_url` (http://host:port)."""
        parts = urlsplit(base_url)
        assert parts.hostname and parts.port, base_url
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, f"{parts.hostname}:{parts.port}")

    def request_bytes(self, path: str, headers: dict[str, str], *, close: bool = False) -> bytes:
        """The bytes of a GET of `path`."""
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        connection = "Connection: close\r\n" if close else ""
        return f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{extra}{connection}\r\n".encode()

    async def read_response(self) -> tuple[int, bytes]:
        """Status and body of the next response (Content-Length framed, as uvicorn sends JSON)."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding":
                raise RuntimeError("chunked responses are not supported by this client")
        return status, await self.reader.readexactly(length)

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """GET `path` and read the answer."""
        self.writer.write(self.request_bytes(path, headers))
        return await self.read_response()

    async def close(self) -> None:
        """Close the connection."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


# --- child process entry points -------------------------------------------------------------------


def _serve_token_server(port: int, latency_ms: float) -> None:
    """The demo token server plus two bench routes, on uvicorn (latency per token request)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from app.demo.token_server import TokenServerState, create_token_server

    state = TokenServerState(latency_seconds=latency_ms / 1000)
    state.add_client(CLIENT_ID, CLIENT_SECRET)

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse({"token_requests": state.token_requests})

    async def refresh_token(_: Request) -> JSONResponse:
        return JSONResponse({"refresh_token": state.issue_refresh_token(CLIENT_ID)})

    app = Starlette(
        routes=[
            Route("/_bench/stats", stats),
            Route("/_bench/refresh-token", refresh_token, methods=["POST"]),
            Mount("/", app=create_token_server(state)),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, ws="none")


def _serve_minimal_app(port: int) -> None:
    """One FastAPI route with a small JSON answer, on uvicorn exactly as `tokenfarm serve`
    starts it (`uvicorn.run(app, host, port, proxy_headers=False)`: 1 worker, uvloop and
    httptools when installed). Like tokenfarm's lifespan, it turns uvicorn's access log down to
    WARNING, so neither writes a line per request (tokenfarm runs at WARNING too)."""
    import logging

    import uvicorn
    from fastapi import FastAPI

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/secrets/{name}/value")
    async def value(name: str) -> dict[str, Any]:
        """A value-shaped answer without any work behind it."""
        return {
            "name": name,
            "value": "at_" + "x" * 43,
            "version": 1,
            "expires_at": None,
            "environment": ENVIRONMENT,
        }

    uvicorn.run(app, host="127.0.0.1", port=port, proxy_headers=False)


async def _load(url: str, headers: dict[str, str], connections: int, seconds: float) -> None:
    """Keep `connections` connections busy with GETs of `url` for `seconds`; print JSON counts."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    stop_at = time.monotonic() + seconds
    counts = {"requests": 0, "non_2xx": 0}

    async def worker() -> None:
        connection = await RawConnection.open(base)
        request = connection.request_bytes(path, headers)
        try:
            while time.monotonic() < stop_at:
                connection.writer.write(request)
                status, _ = await connection.read_response()
                counts["requests"] += 1
                if not 200 <= status < 300:
                    counts["non_2xx"] += 1
        finally:
            await connection.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    counts_out: dict[str, float] = {**counts, "seconds": time.monotonic() - started}
    print(json.dumps(counts_out), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the child processes."""
    parser = argparse.ArgumentParser(prog="bench/common.py")
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token-server")
    token.add_argument("--port", type=int, required=True)
    token.add_argument("--latency-ms", type=float, default=0.0)
    minimal = commands.add_parser("minimal-app")
    minimal.add_argument("--port", type=int, required=True)
    load = commands.add_parser("load")
    load.add_argument("--url", required=True)
    load.add_argument("--header", action="append", default=[], help="Name: value")
    load.add_argument("--connections", type=int, default=16)
    load.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.command == "token-server":
        _serve_token_server(args.port, args.latency_ms)
    elif args.command == "minimal-app":
        _serve_minimal_app(args.port)
    else:
        headers = dict(h.split(": ", 1) for h in args.header)
        asyncio.run(_load(args.url, headers, args.connections, args.seconds))


def wrk_path() -> str | None:
    """The `wrk` load generator, if installed."""
    return shutil.which("wrk")


if __name__ == "__main__":
    main()
