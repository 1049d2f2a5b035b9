"""The one backoff formula: exponential ceiling, a fixed share of it, a random share on top."""

from __future__ import annotations

import random

import pytest

from app.backoff import backoff_seconds, parse_retry_after


class Pinned(random.Random):
    """A generator whose draws sit at a fixed share of their range (0: lowest, 1: highest)."""

    def __init__(self, share: float) -> None:
        super().__init__()
        self.share = share

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.share


LOWEST, HIGHEST = Pinned(0.0), Pinned(1.0)


def equal_jitter(attempt: int, rng: random.Random | None = None) -> float:
    """Webhook deliveries' and web requests' shape: between half the ceiling and all of it."""
    return backoff_seconds(
        attempt, base_seconds=0.5, max_seconds=30, fixed_share=0.5, random_share=0.5, rng=rng
    )


class TestBackoffSeconds:
    @pytest.mark.parametrize(
        ("attempt", "ceiling"),
        [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 30.0), (8, 30.0), (10**9, 30.0)],
    )
    def test_ceiling_doubles_from_the_base_up_to_the_cap(
        self, attempt: int, ceiling: float
    ) -> None:
        assert equal_jitter(attempt, LOWEST) == ceiling / 2
        assert equal_jitter(attempt, HIGHEST) == ceiling

    def test_attempt_zero_counts_as_the_first(self) -> None:
        assert equal_jitter(0, HIGHEST) == equal_jitter(1, HIGHEST) == 0.5

    def test_fixed_share_is_always_waited_and_the_random_share_added(self) -> None:
        def refresh_backoff(rng: random.Random) -> float:
            return backoff_seconds(
                3, base_seconds=30, max_seconds=3600, fixed_share=1.0, random_share=0.1, rng=rng
            )

        assert refresh_backoff(LOWEST) == 120
        assert refresh_backoff(HIGHEST) == pytest.approx(132)

    def test_default_generator_spreads_within_the_bounds(self) -> None:
        delays = [equal_jitter(4) for _ in range(200)]
        assert all(2.0 <= delay <= 4.0 for delay in delays), (min(delays), max(delays))
        assert len(set(delays)) > 100

    def test_no_random_share_means_no_jitter(self) -> None:
        delays = {
            backoff_seconds(2, base_seconds=1, max_seconds=10, fixed_share=1.0, random_share=0.0)
            for _ in range(20)
        }
        assert delays == {2.0}


class TestParseRetryAfter:
    def test_delta_seconds(self) -> None:
        assert parse_retry_after(" 7 ", now=0) == 7.0

    def test_http_date_counts_from_now(self) -> None:
        # Sun, 06 Nov 1994 08:49:37 GMT is 784111777 in epoch seconds.
        assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=784111770) == 7.0

    def test_a_date_in_the_past_means_no_wait(self) -> None:
        assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=784111800) == 0.0

    @pytest.mark.parametrize("value", [None, "", "soon", "-3", "1.5"])
    def test_anything_else_is_ignored(self, value: str | None) -> None:
        assert parse_retry_after(value, now=0) is None
