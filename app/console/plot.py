"""The 30-day plot of one secret, drawn on the server as SVG (no script, no other origin).

Two panels share the days: refreshes per day (succeeded and failed bars side by side) and the
token lifetime each new version was given (`expires_at - created_at`, a point per version, joined
by a line). Input is plain data, output an SVG string: every text escaped, numbers rounded, so the
same data gives the same bytes. Colours come from classes styled by the console's stylesheet
(CSS variables that follow dark mode); the presentation attributes under them use `currentColor`
so the plot stays readable without the stylesheet, and no inline style is needed (a strict CSP).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from xml.sax.saxutils import escape, quoteattr

DAYS = 30
WIDTH, HEIGHT = 720, 300
LEFT, RIGHT = 56, 16
BARS_TOP, BARS_BOTTOM = 40, 150
LIFE_TOP, LIFE_BOTTOM = 190, 270
SUCCEEDED = frozenset({"succeeded", "recovered"})


class PlotRun(Protocol):
    """What the plot needs of a run (a `RunSummary` fits)."""

    @property
    def started_at(self) -> datetime: ...

    @property
    def status(self) -> str: ...


class PlotVersion(Protocol):
    """What the plot needs of a version (a `SecretVersionRead` fits)."""

    @property
    def version(self) -> int: ...

    @property
    def created_at(self) -> datetime: ...

    @property
    def expires_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class DayCount:
    """Refreshes of one day."""

    day: datetime
    succeeded: int
    failed: int


def _days(now: datetime) -> list[datetime]:
    """Midnights of the last `DAYS` days, oldest first, today last."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return [today - timedelta(days=DAYS - 1 - index) for index in range(DAYS)]


def count_runs(runs: Iterable[PlotRun], now: datetime) -> list[DayCount]:
    """Succeeded and failed runs per day of the window (runs still storing count as neither)."""
    days = _days(now)
    succeeded = [0] * DAYS
    failed = [0] * DAYS
    for run in runs:
        index = (run.started_at - days[0]).days
        if 0 <= index < DAYS and run.started_at <= now:
            if run.status in SUCCEEDED:
                succeeded[index] += 1
            elif run.status == "failed":
                failed[index] += 1
    return [DayCount(day, ok, bad) for day, ok, bad in zip(days, succeeded, failed, strict=True)]


def _lifetimes(
    versions: Iterable[PlotVersion], start: datetime, now: datetime
) -> list[tuple[PlotVersion, float]]:
    """(version, lifetime in hours) of each version made in the window that has an expiry."""
    found = [
        (version, (version.expires_at - version.created_at).total_seconds() / 3600)
        for version in versions
        if version.expires_at is not None and start <= version.created_at <= now
    ]
    return sorted(found, key=lambda item: (item[0].created_at, item[0].version))


def _nice_ceiling(value: float) -> float:
    """The axis top: 1, 2, 5 times a power of ten, at least `value`."""
    if value <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= value:
        step *= 10
    while step > value * 10:
        step /= 10
    for factor in (1, 2, 5, 10):
        if step * factor >= value:
            return step * factor
    return step * 10


def _num(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _hours(value: float) -> str:
    return f"{_num(value / 24)} d" if value >= 48 else f"{_num(value)} h"


def render_plot(
    secret: str,
    runs: Iterable[PlotRun],
    versions: Iterable[PlotVersion],
    now: datetime,
) -> str:
    """The SVG of `secret`'s last 30 days up to `now`."""
    counts = count_runs(runs, now)
    start = counts[0].day
    lifetimes = _lifetimes(versions, start, now)
    total_ok = sum(day.succeeded for day in counts)
    total_failed = sum(day.failed for day in counts)
    summary = (
        f"{secret}, last {DAYS} days: {total_ok} refreshes succeeded, {total_failed} failed, "
        f"{len(lifetimes)} new versions with an expiry"
    )
    if lifetimes:
        shortest = min(hours for _, hours in lifetimes)
        longest = max(hours for _, hours in lifetimes)
        summary += f" (lifetime {_hours(shortest)} to {_hours(longest)})"
    plot_width = WIDTH - LEFT - RIGHT
    slot = plot_width / DAYS
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="tf-plot" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label={quoteattr(summary)} font-size="11" fill="currentColor">',
        f"<title>{escape(summary)}</title>",
    ]
    parts += _legend()
    # Refreshes per day.
    top = _nice_ceiling(max((max(d.succeeded, d.failed) for d in counts), default=0))
    parts += _axis(BARS_TOP, BARS_BOTTOM, top, "refreshes per day", _num)
    bar_height = BARS_BOTTOM - BARS_TOP
    for index, day in enumerate(counts):
        x = LEFT + index * slot
        label = day.day.strftime("%Y-%m-%d")
        for offset, count, kind, words in (
            (0.15, day.succeeded, "succeeded", "refreshes succeeded"),
            (0.5, day.failed, "failed", "refreshes failed"),
        ):
            if count:
                height = bar_height * count / top
                parts.append(
                    f'<rect class="tf-plot-mark tf-plot-{kind}" x="{x + slot * offset:.1f}" '
                    f'y="{BARS_BOTTOM - height:.1f}" width="{slot * 0.35:.1f}" '
                    f'height="{height:.1f}"{_fallback(kind)}>'
                    f"<title>{label}: {count} {words}</title></rect>"
                )
    # Token lifetime of each new version.
    life_top = _nice_ceiling(max((hours for _, hours in lifetimes), default=0))
    parts += _axis(LIFE_TOP, LIFE_BOTTOM, life_top, "token lifetime", _hours)
    points = []
    for version, hours in lifetimes:
        x = LEFT + (version.created_at - start).total_seconds() / 86400 * slot
        y = LIFE_BOTTOM - (LIFE_BOTTOM - LIFE_TOP) * max(hours, 0) / life_top
        points.append((x, y, version, hours))
    if len(points) > 1:
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        parts.append(
            f'<polyline class="tf-plot-lifetime-line" points="{line}" fill="none" '
            'stroke="currentColor" stroke-opacity="0.5"/>'
        )
    for x, y, version, hours in points:
        when = version.created_at.strftime("%Y-%m-%d %H:%M")
        parts.append(
            f'<circle class="tf-plot-mark tf-plot-lifetime" cx="{x:.1f}" cy="{y:.1f}" r="3.5"'
            f"{_fallback('lifetime')}><title>version {version.version}, {when} UTC: "
            f"valid {_hours(hours)}</title></circle>"
        )
    parts += _day_axis(counts, slot)
    if not lifetimes and not total_ok and not total_failed:
        parts.append(
            f'<text class="tf-plot-empty" x="{WIDTH / 2:.0f}" '
            f'y="{(BARS_TOP + BARS_BOTTOM) / 2:.0f}" '
            'text-anchor="middle">no refreshes or expiring versions in the last 30 days</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _fallback(kind: str) -> str:
    """Presentation attributes that tell the marks apart without the stylesheet."""
    if kind == "failed":
        return ' fill="none" stroke="currentColor" stroke-width="1.5"'
    if kind == "lifetime":
        return ' fill="currentColor"'
    return ' fill="currentColor" fill-opacity="0.75"'


def _legend() -> list[str]:
    items = (
        ("succeeded", "refresh succeeded", "rect"),
        ("failed", "refresh failed", "rect"),
        ("lifetime", "token lifetime (new version)", "circle"),
    )
    parts = ['<g class="tf-plot-legend">']
    x = LEFT
    for kind, text, shape in items:
        if shape == "rect":
            parts.append(
                f'<rect class="tf-plot-{kind}" x="{x}" y="10" width="10" height="10"'
                f"{_fallback(kind)}/>"
            )
        else:
            parts.append(
                f'<circle class="tf-plot-{kind}" cx="{x + 5}" cy="15" r="4"{_fallback(kind)}/>'
            )
        parts.append(f'<text x="{x + 15}" y="19">{escape(text)}</text>')
        x += 20 + len(text) * 6
    parts.append("</g>")
    return parts


def _axis(
    top: int, bottom: int, maximum: float, title: str, fmt: Callable[[float], str]
) -> list[str]:
    """A y axis with three ticks, its grid lines and its title."""
    parts = [
        f'<text class="tf-plot-axis-title" x="{LEFT}" y="{top - 8}">{escape(title)}</text>',
        f'<line class="tf-plot-axis" x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" '
        'stroke="currentColor"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = bottom - (bottom - top) * fraction
        parts.append(
            f'<line class="tf-plot-grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" '
            f'y2="{y:.1f}" stroke="currentColor" stroke-opacity="0.15"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(maximum * fraction))}</text>"
        )
    return parts


def _day_axis(counts: list[DayCount], slot: float) -> list[str]:
    """The day axis under the lower panel: a tick each week, labelled with the date."""
    parts = [
        f'<line class="tf-plot-axis" x1="{LEFT}" y1="{LIFE_BOTTOM}" x2="{WIDTH - RIGHT}" '
        f'y2="{LIFE_BOTTOM}" stroke="currentColor"/>',
        f'<line class="tf-plot-axis" x1="{LEFT}" y1="{BARS_BOTTOM}" x2="{WIDTH - RIGHT}" '
        f'y2="{BARS_BOTTOM}" stroke="currentColor"/>',
    ]
    for index in range(DAYS - 1, -1, -7):
        x = LEFT + (index + 0.5) * slot
        parts.append(
            f'<text x="{x:.1f}" y="{LIFE_BOTTOM + 16}" text-anchor="middle">'
            f"{counts[index].day.strftime('%b %d')}</text>"
        )
    return parts
