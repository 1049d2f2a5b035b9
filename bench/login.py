"""Benchmark of `/healthz` while logins hammer `POST /auth/token` (issue 13, finding 5).

tokenfarm runs as `tokenfarm serve` on a scratch database. One prober calls `GET /healthz` one
request after the other and records each latency: first on an idle server, then while N tasks
log in as fast as the server answers them, in two phases: with the right password (every
attempt costs one argon2 verification; a success is never throttled) and with wrong passwords (a
guessing attack from one address; throttled, where the server throttles). It prints `/healthz`
p50/p99 of each phase, their ratio to idle, and how the logins were answered.

    .venv/bin/python bench/login.py [--tasks 4] [--seconds 6] [--backend sqlite|postgresql]

A measurement, not a test: it exits 0 whatever the figures are.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
from common import (
    OWNER_EMAIL,
    OWNER_PASSWORD,
    Backend,
    machine_note,
    ms,
    percentile,
    print_block,
    tokenfarm_stack,
)


@dataclass
class Phase:
    """One phase's `/healthz` latencies and the statuses of its logins."""

    label: str
    latencies: list[float] = field(default_factory=list)
    logins: Counter[int] = field(default_factory=Counter)
    login_seconds: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        """Median `/healthz` latency."""
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        """99th percentile `/healthz` latency."""
        return percentile(self.latencies, 99)


async def probe(base_url: str, phase: Phase, stop: asyncio.Event) -> None:
    """`GET /healthz` one after the other until `stop`."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            response = await client.get("/healthz")
            phase.latencies.append(time.perf_counter() - started)
            response.raise_for_status()


async def hammer(base_url: str, password: str, phase: Phase, stop: asyncio.Event) -> None:
    """Log in with `password` as fast as the server answers, until `stop`."""
    form = {"username": OWNER_EMAIL, "password": password}
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            response = await client.post("/auth/token", data=form)
            phase.login_seconds.append(time.perf_counter() - started)
            phase.logins[response.status_code] += 1
            if response.status_code == 429:
                # A real attacker would wait; the bench keeps the pressure on instead.
                await asyncio.sleep(0.01)


async def run_phase(
    base_url: str, label: str, password: str | None, tasks: int, seconds: float
) -> Phase:
    """`/healthz` for `seconds` while `tasks` log in with `password` (None: idle)."""
    phase = Phase(label)
    stop = asyncio.Event()
    coroutines = [probe(base_url, phase, stop)]
    if password is not None:
        coroutines += [hammer(base_url, password, phase, stop) for _ in range(tasks)]
    running = [asyncio.ensure_future(c) for c in coroutines]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*running)
    return phase


async def run_backend(backend: Backend, args: argparse.Namespace) -> list[Phase]:
    """Idle, then right passwords, then wrong ones, each measured for `--seconds`."""
    async with tokenfarm_stack(backend) as stack:
        # Warm up: the first login pays for imports and the first argon2 set-up.
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as client:
            form = {"username": OWNER_EMAIL, "password": OWNER_PASSWORD}
            (await client.post("/auth/token", data=form)).raise_for_status()
            for _ in range(50):
                (await client.get("/healthz")).raise_for_status()
        return [
            await run_phase(stack.base_url, "idle", None, 0, args.seconds),
            await run_phase(
                stack.base_url, "right passwords", OWNER_PASSWORD, args.tasks, args.seconds
            ),
            await run_phase(
                stack.base_url, "wrong passwords", "not-the-password-0", args.tasks, args.seconds
            ),
        ]


def report(backend: Backend, phases: list[Phase], args: argparse.Namespace) -> None:
    """Print the block."""
    idle = phases[0]
    rows = [("machine", machine_note()), ("login tasks", str(args.tasks))]
    for phase in phases:
        rows.append(
            (
                f"/healthz {phase.label}",
                f"p50 {ms(phase.p50)}  p99 {ms(phase.p99)}  max {ms(max(phase.latencies))}  "
                f"({len(phase.latencies)} probes)",
            )
        )
        if phase is idle:
            continue
        rows.append(
            (
                f"  ratio to idle ({phase.label})",
                f"p50 x{phase.p50 / idle.p50:.1f}  p99 x{phase.p99 / idle.p99:.1f}",
            )
        )
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(phase.logins.items()))
        rate = sum(phase.logins.values()) / args.seconds
        rows.append(
            (
                f"  logins ({phase.label})",
                f"{statuses}  ({rate:.1f}/s, p50 {ms(percentile(phase.login_seconds, 50))})",
            )
        )
    print_block(f"login under load, {backend}", rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=4, help="concurrent login tasks")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each phase")
    parser.add_argument(
        "--backend", choices=["sqlite", "postgresql"], action="append", help="default: sqlite"
    )
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    """Measure each backend and print its block."""
    args = parse_args(argv)
    for backend in args.backend or ["sqlite"]:
        report(backend, await run_backend(backend, args), args)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
