"""The FastAPI application: lifespan (database, outbound client, runner, scheduler) and routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.auth.cache import ActorCache
from app.auth.dependencies import document_security
from app.auth.passwords import PasswordHashing
from app.auth.router import auth_router
from app.auth.router import router as accounts_router
from app.auth.throttle import LoginThrottle
from app.auth.tokens import TokenService, load_jwt_secret
from app.clock import Clock, SystemClock
from app.config import Settings, get_settings
from app.configuration.router import MAX_BODY_BYTES as MAX_APPLY_BODY_BYTES
from app.configuration.router import router as configuration_router
from app.connect.connection_router import router as connection_router
from app.connect.router import router as connect_router
from app.console.install import install_console
from app.crypto import load_keyring
from app.fastpath import FastPaths, bind
from app.handlers import install_error_handlers
from app.health import router as health_router
from app.logs import configure_logging
from app.metrics import Metrics
from app.metrics import router as metrics_router
from app.middleware import BodyLimitMiddleware, RequestIdMiddleware
from app.notifications.router import router as webhooks_router
from app.presets.router import router as presets_router
from app.providers.router import router as providers_router
from app.ratelimit import RateLimiter
from app.runs.router import FAST_PATHS as RUN_FAST_PATHS
from app.runs.router import router as runs_router
from app.runtime import runtime, scheduling
from app.schedules.router import router as schedules_router
from app.secrets.cache import ValueCache
from app.secrets.router import FAST_PATHS as SECRET_FAST_PATHS
from app.secrets.router import router as secrets_router
from app.services.router import router as services_router

DESCRIPTION = """
tokenfarm keeps OAuth 2.0 access tokens and other short-lived secrets fresh.

A **service endpoint** runs an **action** (a list of nodes) that calls a token endpoint and writes
the answer into **secrets**. `GET /refresh/{secret}` runs the endpoint bound to a secret.
Secret values leave only through `GET /v1/secrets/{name}/value`.
"""


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    """The app; keys are checked at once so a misconfigured service never starts. `clock` is
    the time the login throttle reads (tests pass a ManualClock)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.resolved_log_format)
    keyring = load_keyring(settings)
    tokens = TokenService(load_jwt_secret(settings), settings.jwt_ttl_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # uvicorn set up its own loggers after this app was made: take them over again.
        configure_logging(settings.log_level, settings.resolved_log_format)
        async with runtime(settings, keyring) as parts:
            parts.events.subscribe(app.state.metrics.observe)
            app.state.engine = parts.engine
            app.state.session_factory = parts.session_factory
            app.state.runner = parts.runner
            app.state.events = parts.events
            app.state.notifier = parts.notifier
            app.state.device_polls = parts.device_polls
            app.state.value_cache = ValueCache.for_database(settings.resolved_database_url)
            try:
                if not settings.scheduler_enabled:
                    yield
                    return
                async with scheduling(parts, settings) as scheduler:
                    app.state.scheduler = scheduler
                    yield
            finally:
                app.state.value_cache.close()
                app.state.value_cache = ValueCache(None)
                await app.state.rate_limiter.close()

    app = FastAPI(
        title="tokenfarm",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # /docs and /redoc are the console's offline pages (app/console/apidocs.py).
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.tokens = tokens
    app.state.actor_cache = ActorCache(settings.auth_cache_seconds)
    app.state.clock = clock or SystemClock()
    app.state.passwords = PasswordHashing(settings.password_hash_concurrency)
    app.state.login_throttle = LoginThrottle(
        app.state.clock, trusted_proxies=settings.trusted_proxy_networks
    )
    app.state.value_cache = ValueCache(None)  # until the database is open
    app.state.database_url = settings.resolved_database_url
    app.state.metrics = Metrics()
    app.state.rate_limiter = RateLimiter.from_settings(
        settings, refused=app.state.metrics.count_refusal
    )
    install_error_handlers(app)
    # Routes are matched in order: the hot paths (value reads, refreshes and runs) come early.
    for router in (
        health_router,
        secrets_router,
        runs_router,
        auth_router,
        accounts_router,
        services_router,
        presets_router,
        schedules_router,
        configuration_router,
        webhooks_router,
        providers_router,
        metrics_router,
        connect_router,
        connection_router,
    ):
        app.include_router(router)
    install_console(app)
    document_security(app)
    # Added last is outermost: the request id and access log wrap the fast paths too. The
    # shortcuts are declared beside their routes and matched on those routes' own paths.
    app.state.fast_paths = True  # False: every request is routed (tests compare the answers)
    app.add_middleware(FastPaths, paths=bind(app.routes, [*SECRET_FAST_PATHS, *RUN_FAST_PATHS]))
    # Before anything reads a body: FastAPI reads and parses it before the auth dependency runs.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_seconds=settings.body_timeout_seconds,
        # The configuration document has a bound of its own, whatever the general one says.
        larger={"/v1/apply": MAX_APPLY_BODY_BYTES},
    )
    app.add_middleware(RequestIdMiddleware)
    return app
