"""The core commands: init, serve, migrate, keygen, scheduler, demo, accounts and keys."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Annotated, Any

import typer
from cryptography.fernet import Fernet
from pydantic import ValidationError

from app.auth.actor import Actor
from app.config import get_settings
from app.errors import TokenfarmError

# The commands of this module; app/cli/__init__.py lists them and loads them when they run.
commands = typer.Typer()

SYSTEM_ACTOR = Actor(kind="system", name="cli", permissions=frozenset({"*"}))
DEMO_OWNER_EMAIL = "owner@example.com"
DEMO_OWNER_PASSWORD = "tokenfarm-demo-password"  # noqa: S105 - printed for the local demo only


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _migrate() -> None:
    from app.migrate import upgrade_database

    upgrade_database(get_settings().resolved_database_url)


@commands.command()
def migrate() -> None:
    """Upgrade the database schema to the newest migration."""
    try:
        _migrate()
    except TokenfarmError as exc:
        _fail(exc.message)
    typer.echo("database is at the newest migration")


async def _create_owner(email: str, password: str) -> bool:
    from app.auth.accounts import ensure_owner
    from app.db import create_engine, session_factory

    engine = create_engine(get_settings().resolved_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            _, created = await ensure_owner(session, email, password)
        return created
    finally:
        await engine.dispose()


@commands.command()
def init(
    owner_email: Annotated[str, typer.Option(help="Email of the owner account.")],
    owner_password: Annotated[str, typer.Option(help="Password of the owner (12+ characters).")],
) -> None:
    """Migrate the database and create the owner account (running it again changes nothing)."""
    try:
        _migrate()
        created = asyncio.run(_create_owner(owner_email, owner_password))
    except TokenfarmError as exc:
        _fail(exc.message)
    if created:
        typer.echo(f"owner {owner_email} created")
    else:
        typer.echo(f"owner {owner_email} already exists; nothing changed")


@commands.command()
def keygen() -> None:
    """Print a new encryption key for TOKENFARM_ENCRYPTION_KEYS."""
    typer.echo(Fernet.generate_key().decode())


@commands.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    migrate_first: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Migrate before serving.")
    ] = True,
) -> None:
    """Serve the API (and the explorer at /docs)."""
    import uvicorn

    from app.main import create_app

    try:
        if migrate_first:
            _migrate()
        app = create_app(get_settings())
    except TokenfarmError as exc:
        _fail(exc.message)
    uvicorn.run(app, host=host, port=port, proxy_headers=False)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on the event loop `serve` uses: uvloop where uvicorn installed it (Linux and
    macOS), asyncio's own elsewhere. uvloop's costs less CPU per callback and socket."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _schedule_alone() -> None:
    import signal

    from app.crypto import load_keyring
    from app.logs import configure_logging
    from app.runtime import runtime, scheduling

    settings = get_settings()
    configure_logging(settings.log_level, settings.resolved_log_format)
    keyring = load_keyring(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with runtime(settings, keyring) as parts, scheduling(parts, settings):
        await stop.wait()


@commands.command()
def scheduler(
    migrate_first: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Migrate before starting.")
    ] = False,
) -> None:
    """Run only the scheduler (schedules and expiry-driven refresh), until SIGTERM or Ctrl-C.

    Run it beside `tokenfarm serve` replicas started with TOKENFARM_SCHEDULER_ENABLED=false, or
    run several: on PostgreSQL they share the work and each due run happens once.
    """
    try:
        if migrate_first:
            _migrate()
        _run_loop(_schedule_alone())
    except TokenfarmError as exc:
        _fail(exc.message)


async def _seed_demo(settings: Any, token_server_url: str, refresh_token: str) -> Any:
    from app.crypto import load_keyring
    from app.db import create_engine, session_factory
    from app.demo.seed import seed_demo

    engine = create_engine(settings.resolved_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            return await seed_demo(
                session,
                load_keyring(settings),
                settings,
                token_server_url=token_server_url,
                client_id="demo-client",
                client_secret="demo-client-secret",  # noqa: S106
                refresh_token=refresh_token,
            )
    finally:
        await engine.dispose()


@commands.command()
def demo(
    port: Annotated[int, typer.Option(help="Port of tokenfarm.")] = 8000,
    token_server_port: Annotated[
        int, typer.Option(help="Port of the bundled token server.")
    ] = 8765,
) -> None:
    """Start tokenfarm on SQLite with a bundled token server, configured by examples/demo.yaml."""
    from pathlib import Path

    import uvicorn

    from app.demo.loopback import LoopbackServer
    from app.demo.seed import DEMO_DOCUMENT, demo_settings
    from app.demo.token_server import TokenServerState, create_token_server
    from app.main import create_app

    base = f"http://127.0.0.1:{port}"
    # The bundled token server listens on loopback, which the egress guard refuses; the connect
    # flow needs TOKENFARM_PUBLIC_URL: the demo's own address unless one is set.
    settings = demo_settings(get_settings(), public_url=base)
    state = TokenServerState(expires_in=300)
    state.add_client(
        "demo-client",
        "demo-client-secret",
        redirect_uris=[settings.connect_callback_url or f"{base}/connect/callback"],
    )
    with LoopbackServer(create_token_server(state), port=token_server_port) as token_server:
        try:
            _migrate()
            asyncio.run(_create_owner(DEMO_OWNER_EMAIL, DEMO_OWNER_PASSWORD))
            setup = asyncio.run(
                _seed_demo(settings, token_server.url, state.issue_refresh_token("demo-client"))
            )
            app = create_app(settings)
        except TokenfarmError as exc:
            _fail(exc.message)
        key = setup.key
        try:
            document = DEMO_DOCUMENT.relative_to(Path.cwd())
        except ValueError:
            document = DEMO_DOCUMENT
        typer.secho("\ntokenfarm demo", bold=True)
        typer.echo(f"  console:        {base}/  (log in as the owner below)")
        typer.echo(f"  API explorer:   {base}/docs")
        typer.echo(f"  token server:   {token_server.url}/oauth/token (in this process)")
        typer.echo(f"  configuration:  {document} applied ({setup.plan.outcome()})")
        typer.echo(f"  owner login:    {DEMO_OWNER_EMAIL} / {DEMO_OWNER_PASSWORD}")
        typer.echo(f"  demo API key:   {key}  (service account 'demo', new at every start)")
        typer.echo("\nTry:")
        typer.echo(f"  export TF_KEY={key}")
        auth = '-H "Authorization: Bearer $TF_KEY"'
        typer.echo(f"  curl -s {auth} {base}/refresh/ACCESS_TOKEN            # refresh now")
        typer.echo(f"  curl -s {auth} {base}/v1/secrets/ACCESS_TOKEN         # metadata, no value")
        typer.echo(f"  curl -s {auth} {base}/v1/secrets/ACCESS_TOKEN/value   # the value")
        typer.echo(f"  curl -s {auth} '{base}/v1/runs?limit=5'               # the run log")
        typer.echo(
            "\nWatch a rotation: the schedule 'rotate-every-minute' refreshes ACCESS_TOKEN once a"
            "\nminute, and every refresh rotates REFRESH_TOKEN, so its version climbs:"
        )
        typer.echo(
            f"  while sleep 15; do curl -s {auth} {base}/v1/secrets/REFRESH_TOKEN"
            " | grep -o '\"version\":[0-9]*'; done\n"
        )
        typer.secho("Connect DEMO_CONNECTED (the demo provider's consent page):", bold=True)
        typer.echo(f"  open {setup.connect_link}")  # the demo always has a public URL
        typer.echo("  click Allow, then see it connected (connected_by, version, expires_at):")
        typer.echo(f"  curl -s {auth} {base}/v1/secrets/DEMO_CONNECTED")
        typer.echo(
            f"  or headless: TOKENFARM_ADDR={base} TOKENFARM_TOKEN=$TF_KEY"
            " tokenfarm connect DEMO_CONNECTED --device\n"
        )
        uvicorn.run(app, host="127.0.0.1", port=port)


service_accounts_cli = typer.Typer(help="Service accounts, for scripts and CI.")
api_keys_cli = typer.Typer(help="API keys of service accounts.")
commands.add_typer(service_accounts_cli, name="service-accounts")
commands.add_typer(api_keys_cli, name="api-keys")


async def _with_accounts(work: Any) -> Any:
    """Run `work(AccountStore, system actor)` in one transaction."""
    from app.auth.accounts import AccountStore
    from app.db import create_engine, session_factory

    engine = create_engine(get_settings().resolved_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            return await work(AccountStore(session), SYSTEM_ACTOR)
    finally:
        await engine.dispose()


@service_accounts_cli.command("create")
def create_service_account(
    name: Annotated[str, typer.Argument(help="Name of the account, e.g. ci-deployer.")],
    role: Annotated[list[str] | None, typer.Option(help="A role to give it (repeatable).")] = None,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
) -> None:
    """Create a service account with roles."""
    from app.auth.schemas import ServiceAccountCreate

    async def work(store: Any, actor: Any) -> None:
        data = ServiceAccountCreate(name=name, description=description, roles=role or [])
        await store.create_service_account(data, actor)

    _run_accounts(work)
    typer.echo(f"service account {name} created")


@api_keys_cli.command("create")
def create_api_key(
    account: Annotated[str, typer.Argument(help="The service account.")],
    name: Annotated[str, typer.Option(help="Name of the key, e.g. ci.")],
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, help="Days until the key stops working.")
    ] = None,
) -> None:
    """Create an API key and print it (the only time it is shown)."""
    from datetime import timedelta

    from app.auth.schemas import ApiKeyCreate
    from app.db import utcnow

    expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None

    async def work(store: Any, actor: Any) -> str:
        account_row = await store.service_account(account)
        created = await store.create_api_key(
            account_row, ApiKeyCreate(name=name, expires_at=expires_at), actor
        )
        return str(created.key)

    typer.echo(_run_accounts(work))


def _run_accounts(work: Any) -> Any:
    try:
        return asyncio.run(_with_accounts(work))
    except TokenfarmError as exc:
        _fail(exc.message)
    except ValidationError as exc:
        _fail("; ".join(str(e["msg"]) for e in exc.errors()))
