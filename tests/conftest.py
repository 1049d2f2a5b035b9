"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, the app, a token server.

Every test that takes `client` runs twice, once per backend. PostgreSQL tests are skipped with a
reason when the server is unreachable, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy import select
from sqlmodel import col

from app.auth.models import Role, User, UserRole
from app.auth.passwords import hash_password
from app.config import Settings
from app.db import utcnow
from app.demo.loopback import LoopbackServer
from app.demo.token_server import TokenServerState, create_token_server
from app.main import create_app
from app.migrate import upgrade_database
from app.pipeline.schemas import CANONICAL_ACTION_EXAMPLE
from app.services.models import Endpoint, Service
from tests.oauth_server.fixtures import oauth_server, oauth_server_process  # noqa: F401

PG_SERVER = os.environ.get("TOKENFARM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
OWNER_EMAIL = "owner@example.com"
OWNER_PASSWORD = "owner-password-canary-51e0"
CLIENT_ID = "client-canary-7f3a9b"
CLIENT_SECRET = "client-secret-canary-d41c8e"
RATE_LIMITS = [
    f"{route}_per_{by}"
    for route in ("refresh", "endpoint", "value_read")
    for by in ("credential", "address")
]


def postgres_unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it on CI where the PostgreSQL service must be up."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true, so this is an error)")
    pytest.skip(reason)


async def _pg_admin(sql: str) -> None:
    connection = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def pg_admin(sql: str) -> None:
    """Run one statement on the `postgres` database (from sync code)."""
    asyncio.run(_pg_admin(sql))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session; tests get copies."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@dataclass
class PostgresDatabase:
    """The session's PostgreSQL database and the rows its migrations seeded (built-in roles)."""

    url: str
    seeded: dict[str, list[dict[str, Any]]]


async def _seeded_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        tables = [row["tablename"] for row in await connection.fetch(TABLES_SQL)]
        seeded = {}
        for table in tables:
            rows = await connection.fetch(f'SELECT * FROM "{table}"')
            if rows:
                seeded[table] = [dict(row) for row in rows]
        return seeded
    finally:
        await connection.close()


TABLES_SQL = (
    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
)
RESTART_SEQUENCES_SQL = (
    "SELECT setval(format('%I.%I', schemaname, sequencename)::regclass, 1, false) "
    "FROM pg_sequences WHERE schemaname = 'public'"
)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[PostgresDatabase]:
    """A PostgreSQL database of this test session, migrated to head once."""
    name = f"tokenfarm_test_{uuid.uuid4().hex[:10]}"
    try:
        pg_admin(f'CREATE DATABASE "{name}"')
        # A throwaway database: a commit need not wait for the WAL to reach the disk (the
        # outage tests' durability runs on their own private cluster).
        pg_admin(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        postgres_unavailable(f"PostgreSQL at {PG_SERVER} is unreachable: {exc!r}")
    try:
        url = f"{PG_SERVER}/{name}"
        upgrade_database(url)
        yield PostgresDatabase(url=url, seeded=asyncio.run(_seeded_rows(url)))
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _reset(database: PostgresDatabase) -> None:
    """Empty every table, then put back what the migrations seeded, as a fresh database has."""
    connection = await asyncpg.connect(database.url, timeout=5)
    try:
        # A connection leaked by an earlier test must fail this loudly, not hang the suite.
        await connection.execute("SET lock_timeout = '10s'")
        tables = [row["tablename"] for row in await connection.fetch(TABLES_SQL)]
        # DELETE, not TRUNCATE: a TRUNCATE of the ~20 tables makes new files for each and took
        # ~210 ms per test, DELETE of a test's few rows ~5 ms. Foreign keys are not checked
        # while every table is emptied (replica role), and the sequences restart as a
        # TRUNCATE ... RESTART IDENTITY would.
        async with connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            for table in tables:
                await connection.execute(f'DELETE FROM "{table}"')
            await connection.execute(RESTART_SEQUENCES_SQL)
            for table, rows in database.seeded.items():
                columns = list(rows[0])
                await connection.copy_records_to_table(
                    table, records=[tuple(row[c] for c in columns) for row in rows], columns=columns
                )
                if "id" in columns:
                    await connection.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f'(SELECT max(id) FROM "{table}"))'
                    )
    finally:
        await connection.close()


def sqlite_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A copy of the migrated SQLite template for one test."""
    path = tmp_path / "tokenfarm.db"
    shutil.copy(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite:///{path}"


SQLITE_ONLY_REASON = (
    "these tests are about the command line (arguments, output, exit codes); the stores under "
    "it run on both backends in the API tests, and each command costs a Python start-up"
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database for each test, on each backend.

    SQLite: a copy of a migrated file. PostgreSQL: the session's database, emptied before the
    test (creating a database per test costs far more than truncating eight tables).
    """
    if request.param == "sqlite":
        return sqlite_database(request, tmp_path)
    database: PostgresDatabase = request.getfixturevalue("postgres_database")
    asyncio.run(_reset(database))
    return database.url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings for the `test` environment with a fresh encryption key.

    Every upstream of the tests is a loopback server, which the egress guard refuses by default.
    """
    return Settings(
        environment="test",
        data_dir=tmp_path,
        database_url=database_url,
        encryption_keys=Fernet.generate_key().decode(),
        jwt_secret=secrets.token_urlsafe(48),
        log_level="DEBUG",
        egress_allow="127.0.0.0/8,::1",
        # Tests drive the scheduler themselves (tests/schedules), with a clock they move.
        scheduler_enabled=False,
        # Counted as in production, but out of reach of the bursts of tests about other things
        # (tests/test_ratelimit.py sets its own).
        **{f"rate_limit_{kind}": "100000/minute" for kind in RATE_LIMITS},
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The tokenfarm app with its lifespan running."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def anonymous_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client without a credential, talking to the app in-process (real ASGI)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tokenfarm.test") as http:
        yield http


async def login(http: httpx.AsyncClient, email: str, password: str) -> str:
    """A login token through `POST /auth/token`."""
    response = await http.post("/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.fixture(scope="session")
def owner_password_hash() -> str:
    """The owner's argon2 hash, computed once: hashing per test would dominate the suite."""
    return hash_password(OWNER_PASSWORD)


async def owner_token(app: FastAPI, password_hash: str) -> str:
    """Create the owner (holding the built-in owner role) and a login token for it.

    The token comes from the app's own token service; `POST /auth/token` has tests of its own.
    """
    async with app.state.session_factory() as session, session.begin():
        user = User(email=OWNER_EMAIL, password_hash=password_hash)
        session.add(user)
        await session.flush()
        owner = (await session.execute(select(Role).where(col(Role.name) == "owner"))).scalar_one()
        assert user.id is not None and owner.id is not None
        session.add(UserRole(user_id=user.id, role_id=owner.id))
    # A new user is at token generation 0.
    token: str = app.state.tokens.issue(OWNER_EMAIL, 0, utcnow())
    return token


@pytest.fixture
async def client(app: FastAPI, owner_password_hash: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client logged in as the owner (every permission)."""
    token = await owner_token(app, owner_password_hash)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://tokenfarm.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as http:
        yield http


@dataclass
class TokenServer:
    """A running loopback token server and the state the test drives it with."""

    state: TokenServerState
    url: str

    @property
    def token_url(self) -> str:
        """Where the token endpoint answers."""
        return f"{self.url}/oauth/token"


@pytest.fixture(scope="session")
def token_server_process() -> Iterator[tuple[LoopbackServer, dict[str, TokenServerState]]]:
    """One uvicorn token server for the session; each test swaps in a fresh state."""
    holder: dict[str, TokenServerState] = {"state": TokenServerState()}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await create_token_server(holder["state"])(scope, receive, send)

    with LoopbackServer(app, lifespan="off") as server:
        yield server, holder


@pytest.fixture
def token_server(
    token_server_process: tuple[LoopbackServer, dict[str, TokenServerState]],
) -> TokenServer:
    """A token server with a fresh state: one registered client, nothing issued yet."""
    server, holder = token_server_process
    state = TokenServerState(hang_seconds=3.0)
    state.add_client(CLIENT_ID, CLIENT_SECRET)
    holder["state"] = state
    return TokenServer(state=state, url=server.url)


async def wait_at_gate(server: TokenServer, count: int) -> None:
    """Wait until `count` token requests wait at the token server's gate (counted ones may not
    have reached it yet: lifting the gate then would let them through)."""
    for _ in range(1000):
        if server.state.gated >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{server.state.gated} of {count} token requests reached the gate")


def canonical_action(token_url: str) -> list[dict[str, Any]]:
    """The canonical refresh of docs/first-refresh.md (plus an else-throw), at a token URL."""
    import copy

    action = copy.deepcopy(CANONICAL_ACTION_EXAMPLE)
    action[1]["url"] = token_url
    action[1]["timeout_seconds"] = 1
    # The default policy's backoff (0.5 s, doubling), shortened so fault tests stay quick.
    action[1]["retry"] = {"attempts": 3, "base_delay_seconds": 0.05, "max_delay_seconds": 5}
    return action


async def create_secret(
    client: httpx.AsyncClient, name: str, value: Any = None, **fields: Any
) -> None:
    """Create a secret through the API, failing the test on any error."""
    body = {"name": name, **fields}
    if value is not None:
        body["value"] = value
    response = await client.post("/v1/secrets", json=body)
    assert response.status_code == 201, response.text


@dataclass
class OAuthSetup:
    """The canonical refresh, wired to the token server: secrets, service and binding."""

    refresh_token: str


async def setup_oauth(
    client: httpx.AsyncClient, server: TokenServer, *, enable_log: bool = True
) -> OAuthSetup:
    """Create the four secrets, the `oauth` service and bind ACCESS_TOKEN to it."""
    refresh_token = server.state.issue_refresh_token(CLIENT_ID)
    await create_secret(client, "CLIENT_ID", CLIENT_ID, environment_specific=False)
    await create_secret(client, "CLIENT_SECRET", CLIENT_SECRET, environment_specific=False)
    await create_secret(client, "REFRESH_TOKEN", refresh_token)
    await create_secret(client, "ACCESS_TOKEN")
    response = await client.post(
        "/v1/services",
        json={
            "slug": "oauth",
            "name": "OAuth",
            "endpoints": [
                {
                    "readable_id": "refresh-token",
                    "name": "Refresh",
                    "enable_log": enable_log,
                    "action": canonical_action(server.token_url),
                }
            ],
        },
    )
    assert response.status_code == 201, response.text
    response = await client.patch(
        "/v1/secrets/ACCESS_TOKEN", json={"refresh_endpoint": "oauth/refresh-token"}
    )
    assert response.status_code == 200, response.text
    return OAuthSetup(refresh_token=refresh_token)


async def store_action_unchecked(
    app: FastAPI,
    action: list[Any],
    *,
    slug: str = "svc",
    readable_id: str = "run",
    enable_log: bool = True,
) -> None:
    """Store a service with one endpoint running `action` straight into the database, unchecked:
    an action saved before the save-time rules (docs/action-language.md) refuse it, which runs
    must still run, and redact."""
    async with app.state.session_factory() as session, session.begin():
        service = Service(slug=slug, name="Saved before the rules")
        session.add(service)
        await session.flush()
        assert service.id is not None
        session.add(
            Endpoint(
                service_id=service.id,
                readable_id=readable_id,
                name="Saved before the rules",
                methods=["GET", "POST"],
                enable_log=enable_log,
                action=action,
            )
        )


async def secret_value(client: httpx.AsyncClient, name: str) -> Any:
    """The current value of a secret (None when it has none)."""
    response = await client.get(f"/v1/secrets/{name}/value")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()["value"]
