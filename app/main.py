"""The FastAPI application: lifespan (database, keys, outbound client, runner) and routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.auth.router import auth_router
from app.auth.router import router as accounts_router
from app.auth.tokens import TokenService, load_jwt_secret
from app.config import Settings, get_settings
from app.crypto import load_keyring
from app.db import create_engine, create_lock_engine, session_factory
from app.handlers import install_error_handlers
from app.health import router as health_router
from app.logs import configure_logging
from app.outbound import Outbound
from app.presets.router import router as presets_router
from app.runs.router import router as runs_router
from app.runs.runner import Runner
from app.secrets.router import router as secrets_router
from app.services.router import router as services_router

DESCRIPTION = """
tokenfarm keeps OAuth 2.0 access tokens and other short-lived secrets fresh.

A **service endpoint** runs an **action** (a list of nodes) that calls a token endpoint and writes
the answer into **secrets**. `GET /refresh/{secret}` runs the endpoint bound to a secret.
Secret values leave only through `GET /v1/secrets/{name}/value`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; keys are checked at once so a misconfigured service never starts."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    keyring = load_keyring(settings)
    tokens = TokenService(load_jwt_secret(settings), settings.jwt_ttl_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.resolved_database_url)
        outbound = Outbound(
            default_timeout_seconds=settings.http_timeout_seconds,
            egress_allow=settings.egress_allow,
        )
        factory = session_factory(engine)
        app.state.engine = engine
        app.state.session_factory = factory
        lock_engine = create_lock_engine(engine)
        runner = Runner(factory, keyring, outbound, settings, lock_engine=lock_engine)
        app.state.runner = runner
        try:
            yield
        finally:
            # A run in flight may hold a rotated token its upstream just sent: let it store it.
            await runner.drain(timeout_seconds=settings.http_timeout_seconds)
            await outbound.aclose()
            if lock_engine is not None:
                await lock_engine.dispose()
            await engine.dispose()

    app = FastAPI(
        title="tokenfarm",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.tokens = tokens
    app.state.database_url = settings.resolved_database_url
    install_error_handlers(app)
    for router in (
        health_router,
        auth_router,
        accounts_router,
        secrets_router,
        services_router,
        presets_router,
        runs_router,
    ):
        app.include_router(router)
    return app
