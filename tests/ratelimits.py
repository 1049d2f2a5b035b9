"""Rate limits for tests: a limiter of chosen rules in the app, and a clock the test moves."""

from __future__ import annotations

import limits.aio.storage.memory
import pytest
from fastapi import FastAPI

from app.ratelimit import CountedBy, RateLimiter, RouteKind, Rule


class FakeTime:
    """`time.time` that stands still until the test moves it."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def time(self) -> float:
        """The current fake time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock on."""
        self.now += seconds


def limit_app(
    app: FastAPI,
    monkeypatch: pytest.MonkeyPatch,
    kind: RouteKind,
    *,
    per_credential: str = "",
    per_address: str = "",
) -> FakeTime:
    """Give the app a limiter whose only rules are these (for `kind`), counting in memory on a
    clock the test moves: the windows of the `limits` library's memory storage and the
    limiter's Retry-After both read it."""
    clock = FakeTime()
    monkeypatch.setattr(limits.aio.storage.memory, "time", clock)
    rules = [
        rule
        for rule in (
            Rule.parse(CountedBy.CREDENTIAL, per_credential),
            Rule.parse(CountedBy.ADDRESS, per_address),
        )
        if rule is not None
    ]
    app.state.rate_limiter = RateLimiter(
        {kind: rules}, refused=app.state.metrics.count_refusal, clock=clock.time
    )
    return clock


def refusals(app: FastAPI, route: str, limit: str) -> float:
    """How many requests `tokenfarm_rate_limited` counted as refused."""
    value = app.state.metrics.registry.get_sample_value(
        "tokenfarm_rate_limited_total", {"route": route, "limit": limit}
    )
    return float(value or 0.0)
