"""How the operator commands show things: relative times, and choices that match the domain's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import get_args

from app.cli.console import duration, timestamp, when
from app.cli.runs import RunStatusChoice, RunTriggerChoice
from app.cli.secrets import EnvironmentChoice
from app.config import Environment
from app.runs.schemas import RunStatus, RunTrigger

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class TestTimes:
    def test_relative_times_read_both_ways(self) -> None:
        assert when(NOW + timedelta(minutes=4, seconds=10), NOW) == "in 4m 10s"
        assert when(NOW - timedelta(hours=3, minutes=2, seconds=5), NOW) == "3h 2m ago"
        assert when(None, NOW) == "-"

    def test_durations_keep_the_two_largest_units(self) -> None:
        assert duration(45) == "45s"
        assert duration(0) == "0s"
        assert duration(2 * 86_400 + 5 * 3600 + 59) == "2d 5h"
        assert duration(3600) == "1h 0m"

    def test_timestamps_are_utc_to_the_second(self) -> None:
        assert timestamp(NOW) == "2030-01-01 12:00:00Z"
        assert timestamp(None) == "-"


class TestChoices:
    def test_command_line_choices_are_the_domains_values(self) -> None:
        assert tuple(EnvironmentChoice) == get_args(Environment)
        assert tuple(RunStatusChoice) == get_args(RunStatus)
        assert tuple(RunTriggerChoice) == get_args(RunTrigger)
