"""Benchmark of refresh coalescing (issue 6): 1,000 callers of one `/refresh/X` at once.

tokenfarm runs as `tokenfarm serve` on a scratch database with the canonical refresh bound to
ACCESS_TOKEN; the loopback token server (its own process) answers after a latency (200 ms by
default) so that the callers overlap the run in flight. Each burst opens every connection first,
then writes every request (raw HTTP/1.1 over asyncio streams, as tests/burst.py does: httpx would
trickle them in over a second), and reads every answer. The callers are one service account's API
key holding `services.run:oauth` and the update permissions of both targets, so each may share
the run in flight. Printed per burst: token requests the token server saw (target: 1), answers
that succeeded, how many shared a run, distinct run ids, and the wait (request written to answer
read) at p50/p99/max.

    .venv/bin/python bench/coalescing.py [--callers 1000] [--bursts 2] [--latency-ms 200]
                                         [--backend sqlite|postgresql|both]

A measurement, not a test: it exits 0 even when the target is missed, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from common import (
    REFRESHER_PERMISSIONS,
    Backend,
    RawConnection,
    Stack,
    create_api_key,
    machine_note,
    ms,
    owner_client,
    percentile,
    print_block,
    raise_open_files_limit,
    seed_canonical_refresh,
    tokenfarm_stack,
    verdict,
)

BURST_TIMEOUT_SECONDS = 180.0
PAUSE_BETWEEN_BURSTS_SECONDS = 1.0


@dataclass
class Burst:
    """What one burst of callers saw."""

    callers: int
    upstream_calls: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    succeeded: int = 0
    coalesced: int = 0
    adopted: int = 0
    run_ids: set[str] = field(default_factory=set)
    waits: list[float] = field(default_factory=list)
    connect_seconds: float = 0.0
    send_spread_seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)


async def one_burst(stack: Stack, key: str, callers: int) -> Burst:
    """Open `callers` connections, write every request, read every answer."""
    burst = Burst(callers)
    before = await stack.token_requests()
    started = time.perf_counter()
    opening = (RawConnection.open(stack.base_url) for _ in range(callers))
    connections = await asyncio.gather(*opening)
    burst.connect_seconds = time.perf_counter() - started
    request = connections[0].request_bytes(
        "/refresh/ACCESS_TOKEN", {"Authorization": f"Bearer {key}"}, close=True
    )
    sent_at: list[float] = []
    for connection in connections:
        connection.writer.write(request)
        sent_at.append(time.perf_counter())
    burst.send_spread_seconds = sent_at[-1] - sent_at[0]

    async def answer(index: int) -> tuple[int, bytes, float]:
        status, body = await connections[index].read_response()
        return status, body, time.perf_counter() - sent_at[index]

    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(answer(i) for i in range(callers)), return_exceptions=True),
            BURST_TIMEOUT_SECONDS,
        )
    finally:
        for connection in connections:
            connection.writer.close()
    for result in results:
        if isinstance(result, BaseException):
            burst.errors[type(result).__name__] += 1
            continue
        status, body, wait = result
        burst.statuses[status] += 1
        burst.waits.append(wait)
        data: dict[str, Any] = json.loads(body) if body else {}
        if status == 200 and data.get("status") == "succeeded":
            burst.succeeded += 1
        burst.coalesced += bool(data.get("coalesced"))
        burst.adopted += bool(data.get("adopted"))
        if data.get("run_id"):
            burst.run_ids.add(str(data["run_id"]))
    # The token server counts a request when it arrives; the run answered after its response.
    burst.upstream_calls = await stack.token_requests() - before
    return burst


async def run_backend(backend: Backend, args: argparse.Namespace) -> list[Burst]:
    """Set up, warm up with a few sequential refreshes, then the bursts."""
    bursts = []
    async with tokenfarm_stack(backend, latency_ms=args.latency_ms) as stack:
        client = await owner_client(stack)
        try:
            await seed_canonical_refresh(client, stack)
            key = await create_api_key(client, "bench-refresher", REFRESHER_PERMISSIONS)
            for _ in range(3):
                response = await client.get("/refresh/ACCESS_TOKEN")
                response.raise_for_status()
        finally:
            await client.aclose()
        for number in range(args.bursts):
            burst = await one_burst(stack, key, args.callers)
            bursts.append(burst)
            print(
                f"  burst {number + 1}: {burst.upstream_calls} token request(s), "
                f"{burst.succeeded}/{burst.callers} succeeded, p99 wait "
                f"{ms(percentile(burst.waits, 99))}",
                flush=True,
            )
            await asyncio.sleep(PAUSE_BETWEEN_BURSTS_SECONDS)
    return bursts


def report(backend: Backend, bursts: list[Burst], args: argparse.Namespace) -> None:
    """Print the block."""
    waits = [wait for burst in bursts for wait in burst.waits]
    calls = [burst.upstream_calls for burst in bursts]
    all_succeeded = all(burst.succeeded == burst.callers for burst in bursts)
    met = all(c == 1 for c in calls)
    statuses: Counter[int] = sum((burst.statuses for burst in bursts), Counter())
    errors: Counter[str] = sum((burst.errors for burst in bursts), Counter())
    rows = [
        (
            "set-up",
            f"{args.bursts} burst(s) of {args.callers} callers on GET /refresh/ACCESS_TOKEN, "
            f"token server latency {args.latency_ms:g} ms",
        ),
        ("token requests", f"{', '.join(map(str, calls))} per burst (target 1 each)"),
        (
            "succeeded",
            f"{', '.join(str(b.succeeded) for b in bursts)} of {args.callers}; statuses "
            + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
            + (f"; client errors {dict(errors)}" if errors else ""),
        ),
        (
            "shared a run",
            f"{', '.join(str(b.coalesced) for b in bursts)} coalesced, "
            f"{', '.join(str(b.adopted) for b in bursts)} adopted; distinct run ids "
            f"{', '.join(str(len(b.run_ids)) for b in bursts)}",
        ),
        (
            "wait",
            f"p50 {ms(percentile(waits, 50))}  p99 {ms(percentile(waits, 99))}  "
            f"max {ms(max(waits, default=float('nan')))} (request written -> answer read, "
            f"all bursts)",
        ),
        (
            "burst shape",
            "connect "
            + ", ".join(ms(b.connect_seconds) for b in bursts)
            + "; every request written within "
            + ", ".join(ms(b.send_spread_seconds) for b in bursts),
        ),
        (
            "target",
            f"1 token request per burst: {verdict(met)}"
            + ("" if all_succeeded else " (not every caller succeeded)"),
        ),
    ]
    print_block(f"coalescing on {backend}", rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--callers", type=int, default=1000, help="concurrent callers")
    parser.add_argument("--bursts", type=int, default=2, help="bursts, one after the other")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="token server latency")
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql", "both"), default="both", help="database"
    )
    args = parser.parse_args(argv)
    if args.callers < 1 or args.bursts < 1 or args.latency_ms < 0:
        parser.error("--callers and --bursts must be at least 1, --latency-ms at least 0")
    return args


async def main(argv: list[str] | None = None) -> int:
    """Measure each backend and print its block; 0 even when the target is missed."""
    args = parse_args(argv)
    # Our side of every connection, and (inherited) tokenfarm's side too.
    limit = raise_open_files_limit(2 * args.callers + 1024)
    print(f"tokenfarm coalescing benchmark; {machine_note()}; open files {limit}", flush=True)
    backends: list[Backend] = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        print(f"\n-- {backend} --", flush=True)
        report(backend, await run_backend(backend, args), args)
    print("\n(a measurement: the exit code is 0 either way)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
