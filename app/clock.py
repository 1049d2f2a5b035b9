"""The one clock the scheduler reads: the system's, or one that tests move by hand."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Protocol

from app.db import utcnow


class Clock(Protocol):
    """What the scheduler needs of time: now (aware UTC), and waiting."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time."""

    def now(self) -> datetime:
        """The current time in UTC."""
        return utcnow()

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of real time."""
        await asyncio.sleep(seconds)


class ManualClock:
    """Time that moves only when `advance` is called; sleepers wake when it passes them."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._moved = asyncio.Condition()

    def now(self) -> datetime:
        """The clock's current time."""
        return self._now

    async def advance(self, seconds: float) -> None:
        """Move the clock forward and wake whoever sleeps until then."""
        async with self._moved:
            self._now += timedelta(seconds=seconds)
            self._moved.notify_all()

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has moved `seconds` forward."""
        until = self._now + timedelta(seconds=seconds)
        async with self._moved:
            await self._moved.wait_for(lambda: self._now >= until)
