"""Retry timing shared by web requests, webhook deliveries and self-driven refreshes.

One formula, each caller with its own numbers: after failed attempt number `n` (1-based) the wait
is the exponential ceiling `min(max_seconds, base_seconds * 2 ** (n - 1))`, of which
`fixed_share` is always waited and up to `random_share` more is drawn at random, so that clients
which failed together don't retry together. "Equal jitter" is `fixed_share=0.5, random_share=0.5`
(between half the ceiling and all of it); `fixed_share=1.0, random_share=0.1` waits the ceiling
plus up to 10 %.
"""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime

MAX_EXPONENT = 32
"""Doubling stops here: every cap in use is reached long before, and 2**n stays small for any n."""


def backoff_seconds(
    attempt: int,
    *,
    base_seconds: float,
    max_seconds: float,
    fixed_share: float,
    random_share: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based; 0 counts as 1)."""
    exponent = min(max(attempt - 1, 0), MAX_EXPONENT)
    ceiling = min(max_seconds, base_seconds * 2**exponent)
    # Not a secret: jitter only spreads load, so the default generator is fine.
    spread = (rng or random).uniform(0.0, ceiling * random_share)
    return ceiling * fixed_share + spread


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), if valid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
