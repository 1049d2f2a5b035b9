"""Prometheus metrics: counters and histograms fed by the event bus, gauges read at scrape time.

Every app has a registry of its own (tests create many apps in one process). What happened —
runs, upstream requests, scheduler lag — is counted as events arrive; what *is* — each secret's
expiry and health, each schedule's next tick — is read from the database on every scrape, so every
replica reports the same figures for them (aggregate those with `max`, the counters with `sum`).

Labels carry names only (services, endpoints, secrets, schedules, hosts, environments), never a
value. Names are bounded by configuration; hosts are capped besides, because a URL may be built
from request data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

import prometheus_client
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col, select

from app import __version__
from app.auth.dependencies import require
from app.auth.permissions import Permission
from app.db import utcnow
from app.events import (
    Event,
    RefreshRefused,
    RunFinished,
    SchedulerLag,
    SecretStatusChanged,
    UpstreamCall,
)
from app.ratelimit import REFRESH_BACKOFF, CountedBy, RouteKind
from app.schedules.models import Schedule
from app.secrets.models import Secret, SecretValue

# `_created` series double the output and Prometheus doesn't read them in the text format.
prometheus_client.disable_created_metrics()

# The classic text format: every Prometheus version reads it, and our names need no escaping.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SECRET_STATUSES = ("ok", "failing", "needs_reauth")
SCHEDULE_STATUSES = ("succeeded", "failed", "interrupted")
MAX_HOSTS = 100
OTHER_HOST = "other"
# A run ends within its deadline (120 s by default); token endpoints answer in well under a second.
RUN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)

router = APIRouter(tags=["operations"])


class Metrics:
    """The metrics of one app: `observe` is its event listener, `exposition` renders a scrape."""

    def __init__(self, max_hosts: int = MAX_HOSTS) -> None:
        self.registry = CollectorRegistry()
        self._hosts: set[str] = set()
        self._max_hosts = max_hosts
        registry = self.registry
        # The process's memory, CPU and open files, and the interpreter's garbage collection.
        ProcessCollector(registry=registry)
        registry.register(GC_COLLECTOR)
        self.build_info = prometheus_client.Gauge(
            "tokenfarm_build_info",
            "The running version (always 1).",
            ["version"],
            registry=registry,
        )
        self.build_info.labels(__version__).set(1)
        self.runs = Counter(
            "tokenfarm_runs",
            "Runs that ended, by endpoint, trigger and outcome (error labels empty on success).",
            ["service", "endpoint", "trigger", "status", "error_type", "error_class"],
            registry=registry,
        )
        self.run_duration = Histogram(
            "tokenfarm_run_duration_seconds",
            "How long runs took, from start to stored outcome.",
            ["service", "endpoint"],
            buckets=RUN_BUCKETS,
            registry=registry,
        )
        self.upstream_requests = Counter(
            "tokenfarm_upstream_requests",
            "Outbound requests of runs (each attempt), by host and outcome "
            "(ok, http_error, timeout, network, refused, bad_response).",
            ["host", "outcome"],
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "tokenfarm_upstream_request_duration_seconds",
            "How long outbound requests took, by host and outcome.",
            ["host", "outcome"],
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.scheduler_lag = Histogram(
            "tokenfarm_scheduler_lag_seconds",
            "How late the scheduler started due work (kind: schedule or refresh).",
            ["kind"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.rate_limited = Counter(
            "tokenfarm_rate_limited",
            "Requests refused for now, by route (refresh, endpoint, value_read) and limit "
            "(credential, address, or refresh_backoff: the secret's refreshes keep failing).",
            ["route", "limit"],
            registry=registry,
        )
        # Every series from the start, at 0: the labels are bounded.
        for route in RouteKind:
            for limit in (*CountedBy, REFRESH_BACKOFF):
                self.rate_limited.labels(route, limit)
        self.status_changes = Counter(
            "tokenfarm_secret_status_changes",
            "Changes of a secret's health, by the status it changed to.",
            ["secret", "status"],
            registry=registry,
        )

    def count_refusal(self, route: str, limit: str) -> None:
        """Count a request refused by a rate limit or a refresh backoff."""
        self.rate_limited.labels(route, limit).inc()

    def observe(self, event: Event) -> None:
        """Count an event (the listener subscribed to the runtime's event bus)."""
        if isinstance(event, RunFinished):
            self.runs.labels(
                event.service,
                event.endpoint,
                event.trigger,
                event.status,
                event.error_type or "",
                event.error_class or "",
            ).inc()
            self.run_duration.labels(event.service, event.endpoint).observe(event.duration_seconds)
        elif isinstance(event, UpstreamCall):
            host = self._host_label(event.host)
            self.upstream_requests.labels(host, event.outcome).inc()
            self.upstream_duration.labels(host, event.outcome).observe(event.duration_seconds)
        elif isinstance(event, SchedulerLag):
            self.scheduler_lag.labels(event.kind).observe(event.seconds)
        elif isinstance(event, SecretStatusChanged):
            self.status_changes.labels(event.secret, event.new_status).inc()
        elif isinstance(event, RefreshRefused):
            self.count_refusal(event.route, REFRESH_BACKOFF)

    def _host_label(self, host: str) -> str:
        """The host itself while fewer than `max_hosts` were seen, then `other` for new ones."""
        host = host.lower()
        if host in self._hosts:
            return host
        if len(self._hosts) < self._max_hosts:
            self._hosts.add(host)
            return host
        return OTHER_HOST

    async def exposition(
        self, session_factory: async_sessionmaker[AsyncSession], now: datetime
    ) -> bytes:
        """The text exposition of a scrape: the counted metrics and the database's gauges."""
        async with session_factory() as session:
            families = [
                *await secret_families(session, now),
                *await schedule_families(session, now),
            ]
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(_Scrape(self.registry, families))
        return generate_latest(scrape)


class _Scrape(Collector):
    """The app's registry followed by the families read for this scrape."""

    def __init__(self, registry: CollectorRegistry, families: Iterable[Metric]) -> None:
        self._registry = registry
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._families


def _seconds_until(at: datetime, now: datetime) -> float:
    return (at - now).total_seconds()


async def secret_families(session: AsyncSession, now: datetime) -> list[Metric]:
    """Each secret's health and failures, and each value's expiry and planned refresh."""
    status = GaugeMetricFamily(
        "tokenfarm_secret_status",
        "A secret's health: 1 for its current status (ok, failing, needs_reauth), 0 for others.",
        labels=["secret", "status"],
    )
    failures = GaugeMetricFamily(
        "tokenfarm_secret_failure_count",
        "Failed refreshes of a secret in a row (a success resets it).",
        labels=["secret"],
    )
    expiry = GaugeMetricFamily(
        "tokenfarm_secret_expiry_seconds",
        "Seconds until a secret's value expires (negative once it has); values without "
        "expires_at are left out.",
        labels=["secret", "environment"],
    )
    next_refresh = GaugeMetricFamily(
        "tokenfarm_secret_next_refresh_seconds",
        "Seconds until the scheduler refreshes a secret's value (negative when overdue); values "
        "not refreshed on their own are left out.",
        labels=["secret", "environment"],
    )
    secrets = await session.execute(
        select(Secret.name, Secret.status, Secret.failure_count).order_by(col(Secret.name))
    )
    for name, current, failure_count in secrets:
        for known in dict.fromkeys((*SECRET_STATUSES, current)):
            status.add_metric([name, known], 1.0 if known == current else 0.0)
        failures.add_metric([name], float(failure_count))
    values = await session.execute(
        select(
            Secret.name,
            SecretValue.environment,
            SecretValue.expires_at,
            SecretValue.next_refresh_at,
        )
        .join(SecretValue, col(SecretValue.secret_id) == col(Secret.id))
        .order_by(col(Secret.name), col(SecretValue.environment))
    )
    for name, environment, expires_at, next_refresh_at in values:
        if expires_at is not None:
            expiry.add_metric([name, environment], _seconds_until(expires_at, now))
        if next_refresh_at is not None:
            next_refresh.add_metric([name, environment], _seconds_until(next_refresh_at, now))
    return [status, failures, expiry, next_refresh]


async def schedule_families(session: AsyncSession, now: datetime) -> list[Metric]:
    """Each enabled schedule's next tick, and how each schedule's last tick went."""
    next_run = GaugeMetricFamily(
        "tokenfarm_schedule_next_run_seconds",
        "Seconds until an enabled schedule's next tick (negative when overdue).",
        labels=["schedule"],
    )
    last_status = GaugeMetricFamily(
        "tokenfarm_schedule_last_status",
        "How a schedule's last tick went: 1 for its status (succeeded, failed, interrupted), "
        "0 for the others; schedules that never ran are left out.",
        labels=["schedule", "status"],
    )
    schedules = await session.execute(
        select(
            Schedule.name, Schedule.enabled, Schedule.next_run_at, Schedule.last_status
        ).order_by(col(Schedule.name))
    )
    for name, enabled, next_run_at, last in schedules:
        if enabled and next_run_at is not None:
            next_run.add_metric([name], _seconds_until(next_run_at, now))
        if last is not None:
            for known in dict.fromkeys((*SCHEDULE_STATUSES, last)):
                last_status.add_metric([name, known], 1.0 if known == last else 0.0)
    return [next_run, last_status]


@router.get(
    "/metrics",
    dependencies=[Depends(require(Permission.METRICS_READ))],
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format 0.0.4",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: runs, upstream requests, scheduler lag, secrets' expiry and health."""
    state = request.app.state
    body = await state.metrics.exposition(state.session_factory, utcnow())
    return Response(body, media_type=CONTENT_TYPE)
