"""The secret page's 30-day plot: marks per data, valid XML, escaped, deterministic."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.console.plot import count_runs, render_plot

NOW = datetime(2026, 12, 2, 15, 30, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


@dataclass
class Run:
    started_at: datetime
    status: str


@dataclass
class Version:
    version: int
    created_at: datetime
    expires_at: datetime | None


def marks(svg: str, kind: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [
        element for element in root.iter() if f"tf-plot-mark tf-plot-{kind}" == element.get("class")
    ]


class TestPlot:
    def test_a_bar_per_day_with_refreshes_and_a_point_per_expiring_version(self) -> None:
        runs = [
            Run(NOW - timedelta(hours=1), "succeeded"),
            Run(NOW - timedelta(hours=2), "succeeded"),
            Run(NOW - timedelta(days=3), "failed"),
            Run(NOW - timedelta(days=3, hours=1), "recovered"),
            Run(NOW - timedelta(days=10), "failed"),
            Run(NOW - timedelta(days=40), "succeeded"),  # before the window
            Run(NOW - timedelta(days=1), "storing"),  # neither
        ]
        versions = [
            Version(1, NOW - timedelta(days=45), NOW - timedelta(days=44)),  # before the window
            Version(2, NOW - timedelta(days=3), NOW - timedelta(days=2)),
            Version(3, NOW - timedelta(hours=1), NOW + timedelta(hours=1)),
            Version(4, NOW - timedelta(hours=1), None),  # set by hand, no expiry
        ]

        svg = render_plot("GITHUB_TOKEN", runs, versions, NOW)

        assert len(marks(svg, "succeeded")) == 2  # today (2) and 3 days ago (1)
        assert len(marks(svg, "failed")) == 2  # 3 and 10 days ago
        lifetimes = marks(svg, "lifetime")
        assert len(lifetimes) == 2
        titles = [mark.find(f"{SVG}title").text for mark in lifetimes]  # type: ignore[union-attr]
        assert titles[0].startswith("version 2,") and titles[0].endswith("valid 24 h")
        assert titles[1].endswith("valid 2 h")
        assert "2 refreshes succeeded" in svg
        root = ET.fromstring(svg)
        assert root.get("role") == "img"
        assert root.get("aria-label", "").startswith(
            "GITHUB_TOKEN, last 30 days: 3 refreshes succeeded, 2 failed, 2 new versions"
        )

    def test_bars_are_as_tall_as_their_counts(self) -> None:
        runs = [Run(NOW - timedelta(minutes=m), "succeeded") for m in range(4)]
        runs += [Run(NOW - timedelta(days=1), "succeeded") for _ in range(2)]

        svg = render_plot("T", runs, [], NOW)

        heights = sorted(float(m.get("height", "0")) for m in marks(svg, "succeeded"))
        assert heights[1] == 2 * heights[0]

    def test_no_data_says_so(self) -> None:
        svg = render_plot("T", [], [], NOW)

        assert marks(svg, "succeeded") == marks(svg, "failed") == marks(svg, "lifetime") == []
        assert "no refreshes or expiring versions" in svg

    def test_names_are_escaped_and_output_is_deterministic(self) -> None:
        runs = [Run(NOW - timedelta(days=2), "failed")]
        name = 'X"<script>&'

        first = render_plot(name, runs, [], NOW)

        assert "<script>" not in first
        ET.fromstring(first)
        assert first == render_plot(name, list(runs), [], NOW)

    def test_colours_come_from_classes_not_inline_styles(self) -> None:
        svg = render_plot("T", [Run(NOW, "succeeded")], [], NOW)

        assert "style=" not in svg and "<style" not in svg
        assert "#" not in svg.split("<title>")[0]  # no fixed colour in the root's attributes

    def test_days_are_counted_in_the_window_only(self) -> None:
        runs = [Run(NOW - timedelta(days=29), "failed"), Run(NOW - timedelta(days=31), "failed")]

        counts = count_runs(runs, NOW)

        assert len(counts) == 30
        assert counts[-1].day.date() == NOW.date()
        assert sum(day.failed for day in counts) == 1
