"""Start-up time of the `tokenfarm` command line (issue 12): `--help` and `--version` against
`python -c pass`, and the heavy modules each imports (from `python -X importtime`).

The commands run as real processes through the installed `tokenfarm` script, one of each in
turn per round, so that load on the machine falls on all of them alike. `secrets --help` loads a
command module (and with it SQLAlchemy) and shows what the lazy top level spares.

    .venv/bin/python bench/cli_startup.py [--runs 20] [--python-m]

A measurement, not a test: tests/cli/test_startup.py holds the rule (no SQLAlchemy, httpx or
FastAPI behind `--help` and `--version`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine_note, ms, percentile, print_block

# Packages whose import a bare `tokenfarm --help` should not pay for (and a few it does).
WATCHED = (
    "sqlalchemy",
    "sqlmodel",
    "httpx",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "pydantic_settings",
    "cryptography",
    "alembic",
    "typer",
    "click",
    "rich",
)
HEAVY = ("sqlalchemy", "httpx", "fastapi")


def tokenfarm_argv(python_m: bool) -> list[str]:
    """The installed `tokenfarm` script next to this interpreter, else (or with --python-m)
    `python -m app.cli`, which runs the `app` of the current directory."""
    script = Path(sys.executable).parent / "tokenfarm"
    if script.exists() and not python_m:
        return [str(script)]
    return [sys.executable, "-m", "app.cli"]


def child_env() -> dict[str, str]:
    """Our environment without any TOKENFARM_* of the caller."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENFARM_")}


def wall_time(argv: list[str]) -> float | None:
    """Seconds from start to exit of one process (its output discarded); None if it failed."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=child_env(), capture_output=True, check=False)  # noqa: S603
    return time.perf_counter() - started if done.returncode == 0 else None


def imported(args: list[str]) -> dict[str, float] | None:
    """Top-level packages that `tokenfarm ARGS` imports, with their cumulative import time (s);
    None if the command failed."""
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-X", "importtime", "-m", "app.cli", *args],
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    packages: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split("|", 2))
        if not cumulative.isdigit() or name.startswith(" "):
            continue
        top = name.split(".")[0]
        if name == top:
            packages[top] = max(packages.get(top, 0.0), int(cumulative) / 1e6)
    return packages


def main() -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="processes of each kind")
    parser.add_argument(
        "--python-m",
        action="store_true",
        help="run `python -m app.cli` (the current directory's code, e.g. an older checkout)",
    )
    options = parser.parse_args()
    tokenfarm = tokenfarm_argv(options.python_m)

    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "tokenfarm --help": [*tokenfarm, "--help"],
        "tokenfarm --version": [*tokenfarm, "--version"],
        "tokenfarm secrets --help": [*tokenfarm, "secrets", "--help"],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    failed: set[str] = set()
    for _ in range(options.runs):
        for name, argv in cases.items():
            seconds = wall_time(argv)
            if seconds is None:
                failed.add(name)
            else:
                times[name].append(seconds)

    print(f"cli start-up, {options.runs} runs each; {machine_note()}")
    baseline = statistics.median(times["python -c pass"])
    rows = []
    for name, values in times.items():
        if name in failed:
            rows.append((name, "fails (this version has no such command or option)"))
            continue
        median = statistics.median(values)
        rows.append(
            (
                name,
                f"median {ms(median)}  p90 {ms(percentile(values, 90))}  min {ms(min(values))}"
                f"  (python start-up + {ms(median - baseline)})",
            )
        )
    print_block("wall time", rows)

    for args in (["--help"], ["--version"], ["secrets", "--help"]):
        packages = imported(args)
        if packages is None:
            print_block(f"tokenfarm {' '.join(args)}: imports", [("", "the command fails")])
            continue
        watched = [f"{name} {ms(packages[name])}" for name in WATCHED if name in packages] or [
            "none"
        ]
        heavy = [name for name in HEAVY if name in packages]
        print_block(
            f"tokenfarm {' '.join(args)}: imports",
            [
                ("watched packages", ", ".join(watched)),
                ("sqlalchemy/httpx/fastapi", ", ".join(heavy) if heavy else "none (the goal)"),
                ("top-level packages", str(len(packages))),
            ],
        )


if __name__ == "__main__":
    main()
