"""Benchmark of `GET /v1/secrets/X/value` throughput (issue 6) against a minimal FastAPI route.

tokenfarm runs as `tokenfarm serve` on a scratch database; a service account whose role holds
`secrets.read:ACCESS_TOKEN` reads the value with its API key. The baseline is one FastAPI route
at the same path returning a value-shaped JSON without any work, started with the same uvicorn
call as `tokenfarm serve` (1 worker, uvloop, httptools; neither logs a line per request). Both are
loaded by the same client, one at a time, in alternating rounds: `wrk` (one thread, keep-alive
connections) when installed, else a raw-socket asyncio client in a child process. tokenfarm's
`GET /healthz` is measured too, to separate the app's HTTP stack from the read's own work.

    .venv/bin/python bench/value_read.py [--seconds 8] [--rounds 2] [--connections 16]
                                         [--backend sqlite|postgresql] [--client wrk|python]

A measurement, not a test: it exits 0 even when the target is missed, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from common import (
    Backend,
    Stack,
    child_env,
    create_api_key,
    create_secret,
    free_port,
    machine_note,
    owner_client,
    print_block,
    script_argv,
    tokenfarm_stack,
    verdict,
    wrk_path,
)

TARGET_RATIO = 0.60
WARMUP_SECONDS = 2.0


@dataclass
class Load:
    """One load run's result."""

    rps: float
    requests: int
    non_2xx: int
    p50_ms: float | None = None
    p99_ms: float | None = None


@dataclass
class Target:
    """A URL to load, and its runs."""

    label: str
    url: str
    runs: list[Load] = field(default_factory=list)

    @property
    def rps(self) -> float:
        """Mean requests per second over the runs."""
        return statistics.fmean(run.rps for run in self.runs)

    @property
    def non_2xx(self) -> int:
        """Answers that were not 2xx, over all runs."""
        return sum(run.non_2xx for run in self.runs)


_DURATION = re.compile(r"([\d.]+)(us|ms|s)\b")


def _wrk_ms(text: str) -> float:
    value, unit = _DURATION.fullmatch(text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, headers: dict[str, str], connections: int, seconds: float) -> Load:
    """`wrk -t1` against `url`; its Requests/sec, latency percentiles and non-2xx count."""
    argv = [str(wrk_path()), "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run(  # noqa: S603 -- wrk with our own arguments
        [*argv, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    )
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx_match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    if errors:
        print(f"    wrk: {errors.group(0)}")
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return Load(
        rps=rps,
        requests=requests,
        non_2xx=int(non_2xx_match.group(1)) if non_2xx_match else 0,
        p50_ms=_wrk_ms(p50.group(1)) if p50 else None,
        p99_ms=_wrk_ms(p99.group(1)) if p99 else None,
    )


def run_python(url: str, headers: dict[str, str], connections: int, seconds: float) -> Load:
    """The raw-socket asyncio client of bench/common.py in a child process."""
    argv = script_argv(
        "load", "--url", url, "--connections", str(connections), "--seconds", f"{seconds:g}"
    )
    for name, value in headers.items():
        argv += ["--header", f"{name}: {value}"]
    done = subprocess.run(  # noqa: S603 -- our own interpreter and arguments
        argv, env=child_env(), capture_output=True, text=True, check=True, timeout=seconds + 60
    )
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    return Load(
        rps=counts["requests"] / counts["seconds"],
        requests=int(counts["requests"]),
        non_2xx=int(counts["non_2xx"]),
    )


async def seed(stack: Stack) -> str:
    """ACCESS_TOKEN with a value valid for a day, and a reader's API key."""
    client = await owner_client(stack)
    try:
        expires_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        await create_secret(client, "ACCESS_TOKEN", "at_" + "x" * 43, expires_at=expires_at)
        return await create_api_key(client, "bench-reader", ["secrets.read:ACCESS_TOKEN"])
    finally:
        await client.aclose()


async def measure(backend: Backend, args: argparse.Namespace) -> list[Target]:
    """Load the baseline, tokenfarm's value read and its /healthz in alternating rounds."""
    load = run_wrk if args.client == "wrk" else run_python
    async with tokenfarm_stack(backend) as stack:
        key = await seed(stack)
        port = free_port()
        minimal = stack.start_child(
            "minimal-app", script_argv("minimal-app", "--port", str(port)), child_env()
        )
        baseline_base = f"http://127.0.0.1:{port}"
        await minimal.wait_until_answering(f"{baseline_base}/v1/secrets/ACCESS_TOKEN/value")
        path = "/v1/secrets/ACCESS_TOKEN/value"
        targets = [
            Target("baseline (minimal FastAPI route)", f"{baseline_base}{path}"),
            Target(f"tokenfarm GET {path}", f"{stack.base_url}{path}"),
            Target("tokenfarm GET /healthz", f"{stack.base_url}/healthz"),
        ]
        headers = {"Authorization": f"Bearer {key}"}
        for round_number in range(args.rounds):
            order = targets if round_number % 2 == 0 else [targets[1], targets[0], targets[2]]
            for target in order:
                # Sequential on purpose: one server is loaded at a time.
                load(target.url, headers, args.connections, WARMUP_SECONDS)
                result = load(target.url, headers, args.connections, args.seconds)
                target.runs.append(result)
                print(
                    f"  round {round_number + 1}: {target.label}: {result.rps:,.0f} req/s"
                    + (f", {result.non_2xx} non-2xx" if result.non_2xx else ""),
                    flush=True,
                )
    return targets


def report(backend: Backend, targets: list[Target], args: argparse.Namespace) -> None:
    """Print the block."""
    baseline, value, healthz = targets
    ratio = value.rps / baseline.rps
    valid = value.non_2xx == 0 and baseline.non_2xx == 0
    client = (
        f"wrk -t1 -c{args.connections} (keep-alive)"
        if args.client == "wrk"
        else f"raw-socket asyncio client, {args.connections} keep-alive connections, 1 process"
    )

    def line(target: Target) -> str:
        runs = ", ".join(f"{run.rps:,.0f}" for run in target.runs)
        latency = ""
        if all(run.p50_ms is not None for run in target.runs):
            p50 = statistics.fmean(run.p50_ms or 0 for run in target.runs)
            p99 = statistics.fmean(run.p99_ms or 0 for run in target.runs)
            latency = f"; latency p50 {p50:.2f} ms p99 {p99:.2f} ms"
        return f"{target.rps:,.0f} req/s (runs: {runs}){latency}"

    rows = [
        ("client", f"{client}, {args.seconds:g} s per run after {WARMUP_SECONDS:g} s warm-up"),
        ("baseline", line(baseline)),
        ("tokenfarm", line(value)),
        ("ratio", f"{ratio:.1%} of the baseline"),
        ("tokenfarm /healthz", f"{line(healthz)} ({healthz.rps / baseline.rps:.1%})"),
        ("non-2xx answers", f"{value.non_2xx} tokenfarm, {baseline.non_2xx} baseline"),
        (
            "target",
            f"at least {TARGET_RATIO:.0%}: {verdict(ratio >= TARGET_RATIO and valid)}"
            + ("" if valid else " (INVALID: some answers were not 2xx)"),
        ),
    ]
    print_block(f"value read throughput on {backend}", rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each target")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql", "both"), default="sqlite", help="database"
    )
    parser.add_argument(
        "--client",
        choices=("wrk", "python"),
        default="wrk" if wrk_path() else "python",
        help="load generator (default: wrk when installed)",
    )
    args = parser.parse_args(argv)
    if args.client == "wrk" and not wrk_path():
        parser.error("wrk is not installed (apt-get install wrk), use --client python")
    if args.seconds <= 0 or args.rounds < 1 or args.connections < 1:
        parser.error("--seconds must be positive, --rounds and --connections at least 1")
    return args


async def main(argv: list[str] | None = None) -> int:
    """Measure each backend and print its block; 0 even when the target is missed."""
    args = parse_args(argv)
    print(f"tokenfarm value-read benchmark; {machine_note()}", flush=True)
    backends: list[Backend] = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        print(f"\n-- {backend} --", flush=True)
        report(backend, await measure(backend, args), args)
    print("\n(a measurement: the exit code is 0 either way)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
