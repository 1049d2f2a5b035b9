"""`/metrics`: what refreshes, upstream requests and the scheduler counted, and the gauges read
from the database at scrape time, in a text exposition that Prometheus' own parser reads."""

from __future__ import annotations

import httpx
import prometheus_client
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app import __version__
from app.clock import ManualClock
from app.config import Settings
from app.db import utcnow
from app.events import UpstreamCall
from app.metrics import Metrics
from app.schedules.scheduler import Scheduler
from tests.auth import conftest as auth_fixtures
from tests.auth.conftest import Callers, assert_refused
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    OWNER_PASSWORD,
    TokenServer,
    secret_value,
    setup_oauth,
)
from tests.processes import free_port
from tests.schedules.conftest import create_schedule, make_account

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
OAUTH = {"service": "oauth", "endpoint": "refresh-token"}

callers = auth_fixtures.callers  # the fixture of tests/auth, shared


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and labels (Prometheus' own parser)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample with exactly these labels, or None."""
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


async def scrape(http: httpx.AsyncClient) -> tuple[str, Samples]:
    """GET /metrics as Prometheus does; the text and its samples."""
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return response.text, parse(response.text)


class TestScrape:
    async def test_an_api_key_with_metrics_read_scrapes_others_are_refused(
        self, callers: Callers, anonymous_client: httpx.AsyncClient
    ) -> None:
        assert (await anonymous_client.get("/metrics")).status_code == 401
        runs_reader = await callers.holding("runs.read")
        assert_refused(await runs_reader.get("/metrics"), "metrics.read")

        prometheus = await callers.holding("metrics.read")
        _, samples = await scrape(prometheus)

        assert value(samples, "tokenfarm_build_info", version=__version__) == 1

    async def test_every_family_is_described_and_parses(self, client: httpx.AsyncClient) -> None:
        text, _ = await scrape(client)

        families = {family.name: family for family in text_string_to_metric_families(text)}
        for name, kind in {
            "tokenfarm_runs": "counter",
            "tokenfarm_run_duration_seconds": "histogram",
            "tokenfarm_upstream_requests": "counter",
            "tokenfarm_upstream_request_duration_seconds": "histogram",
            "tokenfarm_scheduler_lag_seconds": "histogram",
            "tokenfarm_secret_status": "gauge",
            "tokenfarm_secret_expiry_seconds": "gauge",
            "tokenfarm_secret_failure_count": "gauge",
            "tokenfarm_schedule_next_run_seconds": "gauge",
        }.items():
            assert families[name].type == kind, name
            assert families[name].documentation, name
        assert "_created" not in text

    async def test_each_app_counts_in_a_registry_of_its_own(self, app: FastAPI) -> None:
        metrics: Metrics = app.state.metrics
        metrics.observe(UpstreamCall("POST", "auth.example.com", 200, "ok", 0.1))

        labels = {"host": "auth.example.com", "outcome": "ok"}
        assert metrics.registry.get_sample_value("tokenfarm_upstream_requests_total", labels) == 1
        assert metrics.registry is not prometheus_client.REGISTRY
        assert (
            prometheus_client.REGISTRY.get_sample_value("tokenfarm_upstream_requests_total") is None
        )
        assert (
            Metrics().registry.get_sample_value("tokenfarm_upstream_requests_total", labels) is None
        )


class TestRefreshes:
    async def test_a_refresh_is_counted_and_its_secret_reported(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200

        _, samples = await scrape(client)

        runs = dict(OAUTH, trigger="refresh", status="succeeded", error_type="", error_class="")
        assert value(samples, "tokenfarm_runs_total", **runs) == 1
        assert value(samples, "tokenfarm_run_duration_seconds_count", **OAUTH) == 1
        assert total(samples, "tokenfarm_run_duration_seconds_sum", **OAUTH) > 0
        upstream = {"host": "127.0.0.1", "outcome": "ok"}
        assert value(samples, "tokenfarm_upstream_requests_total", **upstream) == 1
        assert value(samples, "tokenfarm_upstream_request_duration_seconds_count", **upstream) == 1
        for secret in ("ACCESS_TOKEN", "REFRESH_TOKEN"):
            assert value(samples, "tokenfarm_secret_status", secret=secret, status="ok") == 1
            assert value(samples, "tokenfarm_secret_status", secret=secret, status="failing") == 0
            assert value(samples, "tokenfarm_secret_failure_count", secret=secret) == 0
        # The token server's access tokens live an hour.
        expiry = value(
            samples, "tokenfarm_secret_expiry_seconds", secret="ACCESS_TOKEN", environment="test"
        )
        assert expiry is not None and 3500 < expiry <= 3600
        # A value without expires_at has no expiry sample.
        assert (
            value(samples, "tokenfarm_secret_expiry_seconds", secret="CLIENT_ID", environment="*")
            is None
        )

    async def test_with_the_token_server_answering_500_the_failure_shows(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200
        token_server.state.fault = "http_500"

        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 502
        _, samples = await scrape(client)

        failed = dict(
            OAUTH,
            trigger="refresh",
            status="failed",
            error_type="upstream_ambiguous",
            error_class="transient",
        )
        assert value(samples, "tokenfarm_runs_total", **failed) == 1
        assert value(samples, "tokenfarm_run_duration_seconds_count", **OAUTH) == 2
        # A refresh answered 500 may have rotated the token: it is tried once.
        errors = {"host": "127.0.0.1", "outcome": "http_error"}
        assert value(samples, "tokenfarm_upstream_requests_total", **errors) == 1
        assert value(samples, "tokenfarm_upstream_request_duration_seconds_count", **errors) == 1
        for secret in ("ACCESS_TOKEN", "REFRESH_TOKEN"):
            assert value(samples, "tokenfarm_secret_status", secret=secret, status="failing") == 1
            assert value(samples, "tokenfarm_secret_status", secret=secret, status="ok") == 0
            assert value(samples, "tokenfarm_secret_failure_count", secret=secret) == 1
            changes = {"secret": secret, "status": "failing"}
            assert value(samples, "tokenfarm_secret_status_changes_total", **changes) == 1
        # The value of the first refresh stays, and so does its expiry.
        expiry = value(
            samples, "tokenfarm_secret_expiry_seconds", secret="ACCESS_TOKEN", environment="test"
        )
        assert expiry is not None and expiry > 3500

    async def test_with_the_token_server_switched_off_the_failure_shows(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        switched_off = TokenServer(state=token_server.state, url=f"http://127.0.0.1:{free_port()}")
        await setup_oauth(client, switched_off)

        response = await client.get("/refresh/ACCESS_TOKEN")
        assert response.status_code == 502, response.text
        _, samples = await scrape(client)

        assert total(samples, "tokenfarm_runs_total", status="failed", **OAUTH) == 1
        assert total(samples, "tokenfarm_runs_total", error_class="transient", **OAUTH) == 1
        network = {"host": "127.0.0.1", "outcome": "network"}
        assert value(samples, "tokenfarm_upstream_requests_total", **network) == 3
        assert (
            value(samples, "tokenfarm_secret_status", secret="ACCESS_TOKEN", status="failing") == 1
        )
        assert value(samples, "tokenfarm_secret_failure_count", secret="ACCESS_TOKEN") == 1
        assert total(samples, "tokenfarm_upstream_requests_total", outcome="ok") == 0

    async def test_a_dead_grant_shows_as_needs_reauth(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        token_server.state.queue_faults("invalid_grant")

        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 502
        _, samples = await scrape(client)

        status = {"secret": "ACCESS_TOKEN"}
        assert value(samples, "tokenfarm_secret_status", status="needs_reauth", **status) == 1
        assert value(samples, "tokenfarm_secret_status", status="failing", **status) == 0
        assert value(samples, "tokenfarm_secret_status", status="ok", **status) == 0
        assert total(samples, "tokenfarm_runs_total", error_class="permanent") == 1

    async def test_no_value_ever_reaches_a_label(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        setup = await setup_oauth(client, token_server)
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200
        token_server.state.fault = "http_500"
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 502

        text, _ = await scrape(client)

        canaries = [CLIENT_ID, CLIENT_SECRET, OWNER_PASSWORD, setup.refresh_token]
        canaries += [await secret_value(client, "ACCESS_TOKEN")]
        canaries += [await secret_value(client, "REFRESH_TOKEN")]
        for canary in canaries:
            assert canary not in text


class TestHostLabels:
    def test_hosts_past_the_cap_share_one_label(self) -> None:
        metrics = Metrics(max_hosts=2)
        for host in ("a.example", "B.example", "c.example", "a.example"):
            metrics.observe(UpstreamCall("GET", host, 200, "ok", 0.01))

        def count(host: str) -> float | None:
            return metrics.registry.get_sample_value(
                "tokenfarm_upstream_requests_total", {"host": host, "outcome": "ok"}
            )

        assert (count("a.example"), count("b.example"), count("other")) == (2, 1, 1)
        assert count("c.example") is None


class TestScheduler:
    async def test_scheduler_lag_and_the_next_tick_appear_after_a_pass(
        self, app: FastAPI, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        response = await client.post(
            "/v1/services",
            json={
                "slug": "pinger",
                "name": "Pinger",
                "endpoints": [
                    {
                        "readable_id": "ping",
                        "name": "Ping",
                        "action": [{"type": "log", "message": "pong"}],
                    }
                ],
            },
        )
        assert response.status_code == 201, response.text
        await make_account(client)
        await create_schedule(client, name="every-minute", service="pinger", endpoint="ping")
        _, before = await scrape(client)
        next_run = value(before, "tokenfarm_schedule_next_run_seconds", schedule="every-minute")
        assert next_run is not None and 0 < next_run <= 60
        assert value(before, "tokenfarm_scheduler_lag_seconds_count", kind="schedule") is None

        clock = ManualClock(utcnow())
        scheduler = Scheduler(
            app.state.session_factory, app.state.runner, settings, clock, events=app.state.events
        )
        await clock.advance(61)
        assert await scheduler.run_due() == 1
        _, after = await scrape(client)

        assert value(after, "tokenfarm_scheduler_lag_seconds_count", kind="schedule") == 1
        lag = value(after, "tokenfarm_scheduler_lag_seconds_sum", kind="schedule")
        assert lag is not None and 0 < lag <= 61
        ticks = {"service": "pinger", "endpoint": "ping", "trigger": "schedule"}
        assert total(after, "tokenfarm_runs_total", status="succeeded", **ticks) == 1
        status = {"schedule": "every-minute"}
        assert value(after, "tokenfarm_schedule_last_status", status="succeeded", **status) == 1
        assert value(after, "tokenfarm_schedule_last_status", status="failed", **status) == 0
