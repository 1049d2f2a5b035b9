"""Benchmark of expiry-driven refresh (issue 5): are secrets refreshed before they expire?

Seeds N secrets whose values expire evenly over a spread of minutes, each bound to its own
endpoint that asks a loopback token server (with a fixed latency) for a client_credentials token,
then runs `tokenfarm scheduler` as a real process until every secret has been refreshed. Prints,
per backend, how many refreshes came too late and by how much, the CPU seconds per refresh and the
peak RSS of the scheduler process, next to an idle scheduler measured in the same run.

    .venv/bin/python bench/scheduler.py [--secrets 10000] [--spread-minutes 10] [--latency-ms 50]
                                        [--backend sqlite|postgresql|both] [--concurrency N]

A measurement, not a test: it exits 0 even when a target is missed, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import asyncpg
from cryptography.fernet import Fernet
from sqlalchemy import Table, and_, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import aliased
from sqlmodel import SQLModel, col

from app.auth.models import Role, ServiceAccount, ServiceAccountRole
from app.crypto import Keyring
from app.db import create_engine, utcnow
from app.demo.loopback import LoopbackServer
from app.demo.token_server import TOKEN_PATH, TokenServerState, create_token_server
from app.migrate import upgrade_database_async
from app.pipeline.analysis import validate_action
from app.pipeline.schemas import dump_action
from app.runs.models import Run
from app.secrets.expiry import plan_next_refresh
from app.secrets.models import ALL_ENVIRONMENTS, Secret, SecretValue, SecretVersion
from app.secrets.store import ValueTiming
from app.services.models import Endpoint, Service

Backend = Literal["sqlite", "postgresql"]

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = "test"
ACCOUNT = "bench-bot"
ROLE = "bench-refresher"
ENDPOINTS_PER_SERVICE = 100
FIRST_EXPIRY_SECONDS = 60.0
"""The first value expires this long after seeding; the others follow evenly over the spread."""
GRACE_SECONDS = 180.0
"""The run stops this long after the spread if some secret was still not refreshed."""
IDLE_SECONDS = 10.0
IDLE_SETTLE_SECONDS = 3.0
"""The idle baseline is sampled this long after start (start-up done) and IDLE_SECONDS later."""
TOKEN_LIFETIME_SECONDS = 3600
"""What the token server answers as `expires_in`: long enough that each secret refreshes once."""
TARGET_PEAK_RSS_MB = 300.0
INSERT_BATCH = 1000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PG_SERVER = os.environ.get("TOKENFARM_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def _table(model: type[SQLModel]) -> Table:
    """The Core table of a SQLModel table class (for bulk inserts without the ORM)."""
    table = SQLModel.metadata.tables[str(model.__tablename__)]
    return table


# --- the scheduler process ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessSample:
    """CPU and memory of a process at one moment, from /proc."""

    cpu_seconds: float
    rss_mb: float
    peak_rss_mb: float


def sample_process(pid: int) -> ProcessSample:
    """utime+stime (clock ticks) from /proc/PID/stat, VmRSS and VmHWM from /proc/PID/status."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Field 2 (the command) may hold spaces; the fields after its closing parenthesis don't.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat(5)
    memory: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            memory[name] = int(rest.split()[0]) / 1024  # kB -> MB
    return ProcessSample(cpu, memory["VmRSS"], memory["VmHWM"])


class SchedulerProcess:
    """`tokenfarm scheduler` as a child process, with its stderr kept in a file."""

    def __init__(self, env: dict[str, str], workdir: Path, label: str) -> None:
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"scheduler-{label}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_monotonic = 0.0

    @property
    def pid(self) -> int:
        """The child's pid."""
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        """Start the process (its settings come only from `env`)."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "scheduler"],
                env=self.env,
                cwd=self.workdir,  # not the repository: a stray .env there must not apply
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.started_monotonic = time.monotonic()

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    def sample(self) -> ProcessSample:
        """Its CPU and memory now."""
        return sample_process(self.pid)

    def stop(self, timeout_seconds: float = 60.0) -> int | None:
        """SIGTERM, wait for a clean exit (runs in flight may take a while), kill if it hangs."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                print(f"  ! the scheduler did not stop within {timeout_seconds:g} s; killing it")
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def log_lines(self) -> list[str]:
        """What it wrote to stderr."""
        if not self.log_path.exists():
            return []
        return self.log_path.read_text(errors="replace").splitlines()


def scheduler_env(
    url: str, keys: str, workdir: Path, concurrency: int | None, poll_seconds: float | None
) -> dict[str, str]:
    """The scheduler's environment: ours without any TOKENFARM_* of the caller, plus the run's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENFARM_")}
    env.update(
        {
            "TOKENFARM_DATABASE_URL": url,
            "TOKENFARM_ENCRYPTION_KEYS": keys,
            "TOKENFARM_JWT_SECRET": secrets.token_urlsafe(48),
            "TOKENFARM_ENVIRONMENT": ENVIRONMENT,
            "TOKENFARM_DATA_DIR": str(workdir / "data"),
            # The token server listens on loopback, which the egress guard refuses by default.
            "TOKENFARM_EGRESS_ALLOW": "127.0.0.0/8",
            "TOKENFARM_LOG_LEVEL": "WARNING",
        }
    )
    if concurrency is not None:
        env["TOKENFARM_SCHEDULER_CONCURRENCY"] = str(concurrency)
    if poll_seconds is not None:
        env["TOKENFARM_SCHEDULER_POLL_SECONDS"] = str(poll_seconds)
    return env


# --- the database -------------------------------------------------------------------------------


async def _pg_admin(sql: str) -> None:
    connection = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def scratch_database(backend: Backend, workdir: Path) -> AsyncIterator[str]:
    """A fresh, migrated database: a SQLite file in `workdir`, or a PostgreSQL database that is
    dropped afterwards."""
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
        await upgrade_database_async(url)
        yield url
        return
    name = f"tokenfarm_bench_{uuid.uuid4().hex[:10]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        url = f"{PG_SERVER}/{name}"
        await upgrade_database_async(url)
        yield url
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def refresh_action(token_url: str, secret: str) -> list[dict[str, Any]]:
    """A client_credentials request whose token becomes `secret`, expiring as the server says."""
    return [
        {
            "type": "web_request",
            "method": "POST",
            "url": token_url,
            "headers": {"Accept": "application/json"},
            "auth": {
                "type": "basic",
                "username": "{{ secrets.CLIENT_ID }}",
                "password": "{{ secrets.CLIENT_SECRET }}",
            },
            "body": {"form": {"grant_type": "client_credentials"}},
            "retry": {"attempts": 3, "base_delay_seconds": 0.2},
            "result_mapping": {"token": "$.access_token", "ttl": "$.expires_in"},
        },
        {
            "type": "update_secret",
            "secret": secret,
            "value": "{{ vars.token }}",
            "expires_in": "{{ vars.ttl }}",
        },
    ]


def validated_action(token_url: str, secret: str) -> list[dict[str, Any]]:
    """The action as the services store would save it, or `ActionInvalid` if it is broken."""
    nodes = validate_action(
        refresh_action(token_url, secret),
        declared_variables=set(),
        known_secrets={"CLIENT_ID", "CLIENT_SECRET", secret},
    )
    return dump_action(nodes)


def token_name(index: int) -> str:
    """TOKEN_00042."""
    return f"TOKEN_{index:05d}"


async def _insert(connection: AsyncConnection, model: type[SQLModel], rows: list[Any]) -> None:
    for start in range(0, len(rows), INSERT_BATCH):
        await connection.execute(insert(_table(model)), rows[start : start + INSERT_BATCH])


async def _ids(connection: AsyncConnection, key: Any, id_column: Any) -> dict[str, int]:
    return {name: row_id for name, row_id in (await connection.execute(select(key, id_column)))}


@dataclass(frozen=True)
class Seeded:
    """What was seeded: when, and how long it took."""

    at: datetime
    seconds: float


async def seed(
    engine: AsyncEngine,
    keyring: Keyring,
    *,
    token_url: str,
    client_id: str,
    client_secret: str,
    count: int,
    spread_seconds: float,
) -> Seeded:
    """Bulk-insert the account, its role, the client secrets, the services and the TOKEN_i."""
    started = time.perf_counter()
    now = utcnow()
    # Every action differs only in the secret it writes: validate the first and the last one as
    # the services store would, and build the rest from the same template.
    template = validated_action(token_url, token_name(0))
    if validated_action(token_url, token_name(count - 1))[1]["secret"] != token_name(count - 1):
        raise RuntimeError("the action template does not name its secret where expected")

    def action_for(index: int) -> list[dict[str, Any]]:
        return [template[0], {**template[1], "secret": token_name(index)}]

    services = (count + ENDPOINTS_PER_SERVICE - 1) // ENDPOINTS_PER_SERVICE
    async with engine.begin() as connection:
        await _insert(
            connection,
            Role,
            [
                {
                    "name": ROLE,
                    "description": "Refreshes the benchmark's tokens",
                    "permissions": ["services.run:*", "secrets.update_from_service:*"],
                    "builtin": False,
                    "created_at": now,
                }
            ],
        )
        await _insert(
            connection,
            ServiceAccount,
            [{"name": ACCOUNT, "description": "benchmark", "created_at": now}],
        )
        role_id = (await _ids(connection, col(Role.name), col(Role.id)))[ROLE]
        account_id = (await _ids(connection, col(ServiceAccount.name), col(ServiceAccount.id)))[
            ACCOUNT
        ]
        await _insert(
            connection,
            ServiceAccountRole,
            [{"service_account_id": account_id, "role_id": role_id}],
        )
        await _insert(
            connection,
            Service,
            [
                {
                    "slug": f"bench-{s:03d}",
                    "name": f"Benchmark service {s}",
                    "description": "",
                    "variables": [],
                    "created_at": now,
                    "updated_at": now,
                }
                for s in range(services)
            ],
        )
        service_ids = await _ids(connection, col(Service.slug), col(Service.id))
        await _insert(
            connection,
            Endpoint,
            [
                {
                    "service_id": service_ids[f"bench-{i // ENDPOINTS_PER_SERVICE:03d}"],
                    "readable_id": f"token-{i:05d}",
                    "name": f"Refresh {token_name(i)}",
                    "description": "",
                    "methods": ["GET", "POST"],
                    "enable_log": False,
                    "action": action_for(i),
                }
                for i in range(count)
            ],
        )

        secret_rows: list[dict[str, Any]] = [
            _secret_row(name, now, environment_specific=False)
            for name in ("CLIENT_ID", "CLIENT_SECRET")
        ]
        for i in range(count):
            endpoint = f"bench-{i // ENDPOINTS_PER_SERVICE:03d}/token-{i:05d}"
            secret_rows.append(_secret_row(token_name(i), now, refresh_endpoint=endpoint))
        await _insert(connection, Secret, secret_rows)
        secret_ids = await _ids(connection, col(Secret.name), col(Secret.id))

        values: list[dict[str, Any]] = []
        for name, value in (("CLIENT_ID", client_id), ("CLIENT_SECRET", client_secret)):
            values.append(
                _value_row(secret_ids[name], ALL_ENVIRONMENTS, keyring.encrypt(value), now, None)
            )
        planner = Secret.model_validate(_secret_row(token_name(0), now, refresh_endpoint="b/t"))
        for i in range(count):
            share = i / (count - 1) if count > 1 else 0.0
            expires_at = now + timedelta(seconds=FIRST_EXPIRY_SECONDS + share * spread_seconds)
            row = _value_row(
                secret_ids[token_name(i)],
                ENVIRONMENT,
                keyring.encrypt(f"initial-token-{i}"),
                now,
                expires_at,
            )
            # Every TOKEN_i has the same refresh settings, so one Secret plans them all.
            row["next_refresh_at"] = plan_next_refresh(
                planner, ValueTiming(expires_at=expires_at, updated_at=now), now
            )
            values.append(row)
        await _insert(connection, SecretValue, values)
        await _insert(
            connection,
            SecretVersion,
            [
                {
                    "secret_id": row["secret_id"],
                    "environment": row["environment"],
                    "version": 1,
                    "ciphertext": row["ciphertext"],
                    "expires_at": row["expires_at"],
                    "source": "create",
                    "run_id": None,
                    "actor": "system:bench",
                    "created_at": now,
                }
                for row in values
            ],
        )
    return Seeded(at=now, seconds=time.perf_counter() - started)


def _secret_row(
    name: str,
    now: datetime,
    *,
    environment_specific: bool = True,
    refresh_endpoint: str | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "description": "",
        "environment_specific": environment_specific,
        "locked": False,
        "refresh_endpoint": refresh_endpoint,
        "status": "ok",
        "last_error": None,
        "failure_count": 0,
        "refresh_as": ACCOUNT if refresh_endpoint else None,
        "refresh_before_expiry_seconds": None,
        "last_refreshed_at": None,
        "created_at": now,
        "updated_at": now,
    }


def _value_row(
    secret_id: int, environment: str, ciphertext: str, now: datetime, expires_at: datetime | None
) -> dict[str, Any]:
    return {
        "secret_id": secret_id,
        "environment": environment,
        "version": 1,
        "ciphertext": ciphertext,
        "expires_at": expires_at,
        "updated_at": now,
        "next_refresh_at": None,
        "claimed_by": None,
        "claim_expires_at": None,
    }


# --- watching and judging -----------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where the TOKEN_i stand at one moment."""

    refreshed: int
    due: int
    """Not refreshed yet although their planned refresh time has passed."""
    expired: int
    """Not refreshed yet and already expired: missed."""


def _token_values() -> Any:
    return (
        select(func.count())
        .select_from(_table(SecretValue).join(_table(Secret)))
        .where(
            col(SecretValue.environment) == ENVIRONMENT,
            col(Secret.name).startswith("TOKEN_", autoescape=True),
        )
    )


async def progress(engine: AsyncEngine) -> Progress:
    """How many TOKEN_i are refreshed, waiting past their planned time, or expired unrefreshed."""
    now = utcnow()
    base = _token_values()
    async with engine.connect() as connection:
        refreshed = (await connection.execute(base.where(col(SecretValue.version) >= 2))).scalar()
        pending = base.where(col(SecretValue.version) == 1)
        due = await connection.execute(pending.where(col(SecretValue.next_refresh_at) <= now))
        expired = await connection.execute(pending.where(col(SecretValue.expires_at) <= now))
        return Progress(int(refreshed or 0), int(due.scalar() or 0), int(expired.scalar() or 0))


@dataclass
class Margins:
    """For each TOKEN_i, how long before its old value expired the new one was written."""

    kept: list[float] = field(default_factory=list)
    """Seconds to spare of those refreshed in time."""
    late: list[float] = field(default_factory=list)
    """Seconds past expiry of those refreshed too late (at or after expiry)."""
    never: list[float] = field(default_factory=list)
    """Seconds past expiry, when the run stopped, of those never refreshed."""

    @property
    def missed(self) -> int:
        """Refreshed at or after expiry, or never."""
        return len(self.late) + len(self.never)

    @property
    def refreshed(self) -> int:
        """Refreshed at all."""
        return len(self.kept) + len(self.late)


async def margins(engine: AsyncEngine, stopped_at: datetime) -> Margins:
    """Compare each TOKEN_i's version-1 expiry with when its version 2 was written."""
    old, new = aliased(SecretVersion), aliased(SecretVersion)
    query = (
        select(col(old.expires_at), col(new.created_at))
        .select_from(_table(Secret))
        .join(
            old,
            and_(
                col(old.secret_id) == col(Secret.id),
                col(old.environment) == ENVIRONMENT,
                col(old.version) == 1,
            ),
        )
        .outerjoin(
            new,
            and_(
                col(new.secret_id) == col(Secret.id),
                col(new.environment) == ENVIRONMENT,
                col(new.version) == 2,
            ),
        )
        .where(col(Secret.name).startswith("TOKEN_", autoescape=True))
    )
    result = Margins()
    async with engine.connect() as connection:
        for expires_at, written_at in await connection.execute(query):
            assert expires_at is not None, "every seeded TOKEN_i value expires"
            if written_at is None:
                result.never.append(max((stopped_at - expires_at).total_seconds(), 0.0))
                continue
            spare = (expires_at - written_at).total_seconds()
            if spare > 0:
                result.kept.append(spare)
            else:
                result.late.append(-spare)
    return result


async def failed_runs(engine: AsyncEngine) -> Counter[str]:
    """Failed runs by error type (the runner records every failure)."""
    query = (
        select(col(Run.error_type), func.count())
        .where(col(Run.status) != "succeeded")
        .group_by(col(Run.error_type))
    )
    async with engine.connect() as connection:
        return Counter({str(kind): int(n) for kind, n in await connection.execute(query)})


# --- one backend --------------------------------------------------------------------------------


@dataclass
class Figures:
    """What one backend measured."""

    backend: Backend
    secrets: int
    idle_seconds: float = 0.0
    idle_startup_cpu: float = 0.0
    idle_cpu_per_second: float = 0.0
    idle_peak_rss_mb: float = 0.0
    idle_rss_mb: float = 0.0
    seed_seconds: float = 0.0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    sampled_rss_mb: float = 0.0
    """The highest VmRSS of the progress samples: the peak under load, start-up aside."""
    token_requests: int = 0
    margins: Margins = field(default_factory=Margins)
    failures: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def cpu_per_refresh(self) -> float | None:
        """CPU seconds of the scheduler process per refresh, start-up and idle polling included."""
        done = self.margins.refreshed
        return self.cpu_seconds / done if done else None

    @property
    def net_cpu_per_refresh(self) -> float | None:
        """Same, less what the idle baseline spends starting up and polling for that long."""
        done = self.margins.refreshed
        if not done:
            return None
        idle = self.idle_startup_cpu + self.idle_cpu_per_second * self.wall_seconds
        return max(self.cpu_seconds - idle, 0.0) / done

    @property
    def largest_miss(self) -> float:
        """Seconds past expiry of the latest refresh (or of a never-refreshed value at stop)."""
        return max([*self.margins.late, *self.margins.never], default=0.0)


async def idle_baseline(env: dict[str, str], workdir: Path, figures: Figures) -> None:
    """The same scheduler on the same (still empty) database, with nothing due."""
    process = SchedulerProcess(env, workdir, f"{figures.backend}-idle")
    process.start()
    try:
        await asyncio.sleep(IDLE_SETTLE_SECONDS)
        settled = process.sample()
        await asyncio.sleep(IDLE_SECONDS)
        if not process.alive():
            raise RuntimeError("the idle scheduler exited:\n" + "\n".join(process.log_lines()))
        after = process.sample()
        figures.idle_seconds = time.monotonic() - process.started_monotonic
    finally:
        process.stop()
    figures.idle_cpu_per_second = (after.cpu_seconds - settled.cpu_seconds) / IDLE_SECONDS
    figures.idle_startup_cpu = max(
        settled.cpu_seconds - figures.idle_cpu_per_second * IDLE_SETTLE_SECONDS, 0.0
    )
    figures.idle_peak_rss_mb = after.peak_rss_mb
    figures.idle_rss_mb = after.rss_mb


async def run_backend(backend: Backend, args: argparse.Namespace) -> Figures:
    """Baseline, seed, run the scheduler until done (or out of time), measure."""
    figures = Figures(backend=backend, secrets=args.secrets)
    spread_seconds = args.spread_minutes * 60
    keys = Fernet.generate_key().decode()
    keyring = Keyring([keys])
    client_id, client_secret = "bench-client", secrets.token_hex(16)
    state = TokenServerState(
        expires_in=TOKEN_LIFETIME_SECONDS, latency_seconds=args.latency_ms / 1000
    )
    state.add_client(client_id, client_secret)
    with (
        tempfile.TemporaryDirectory(prefix="tokenfarm-bench-") as tmp,
        LoopbackServer(create_token_server(state)) as token_server,
    ):
        workdir = Path(tmp)
        async with scratch_database(backend, workdir) as url:
            env = scheduler_env(url, keys, workdir, args.concurrency, args.poll_seconds)
            print(f"  idle baseline: the scheduler on the empty database for {IDLE_SECONDS:g} s")
            await idle_baseline(env, workdir, figures)
            engine = create_engine(url)
            try:
                seeded = await seed(
                    engine,
                    keyring,
                    token_url=f"{token_server.url}{TOKEN_PATH}",
                    client_id=client_id,
                    client_secret=client_secret,
                    count=args.secrets,
                    spread_seconds=spread_seconds,
                )
                figures.seed_seconds = seeded.seconds
                print(f"  seeded {args.secrets} secrets in {seeded.seconds:.1f} s")
                state.reset_counters()
                await watch(engine, env, workdir, figures, spread_seconds, args.secrets)
                stopped_at = utcnow()
                figures.token_requests = state.token_requests
                figures.margins = await margins(engine, stopped_at)
                figures.failures = await failed_runs(engine)
            finally:
                await engine.dispose()
    return figures


async def watch(
    engine: AsyncEngine,
    env: dict[str, str],
    workdir: Path,
    figures: Figures,
    spread_seconds: float,
    count: int,
) -> None:
    """Run the scheduler until every TOKEN_i is refreshed or the time is up; sample it, stop it."""
    process = SchedulerProcess(env, workdir, figures.backend)
    process.start()
    deadline = process.started_monotonic + spread_seconds + GRACE_SECONDS
    interval = 5.0 if spread_seconds >= 300 else 2.0
    last: ProcessSample | None = None
    try:
        while True:
            await asyncio.sleep(interval)
            if not process.alive():
                print("  ! the scheduler exited early")
                break
            last = process.sample()
            figures.sampled_rss_mb = max(figures.sampled_rss_mb, last.rss_mb)
            now = await progress(engine)
            elapsed = time.monotonic() - process.started_monotonic
            print(
                f"  +{elapsed:5.0f} s  refreshed {now.refreshed:>6}/{count}"
                f"  due {now.due:>5}  expired unrefreshed {now.expired:>5}"
                f"  cpu {last.cpu_seconds:7.1f} s  rss {last.rss_mb:6.1f} MB",
                flush=True,
            )
            if now.refreshed >= count or time.monotonic() >= deadline:
                break
        if process.alive():
            # Just before stopping: after SIGTERM the process (and its /proc entry) goes away.
            last = process.sample()
            figures.sampled_rss_mb = max(figures.sampled_rss_mb, last.rss_mb)
        figures.wall_seconds = time.monotonic() - process.started_monotonic
    finally:
        figures.exit_code = process.stop()
    if last is not None:
        figures.cpu_seconds = last.cpu_seconds
        figures.peak_rss_mb = last.peak_rss_mb
    figures.warnings = [line for line in process.log_lines() if line.strip()]


# --- report -------------------------------------------------------------------------------------


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.2f} ms"


def report(figures: Figures) -> None:
    """Print one backend's figures and whether the targets were met."""
    m = figures.margins
    none_missed = m.missed == 0
    rss_ok = figures.peak_rss_mb < TARGET_PEAK_RSS_MB
    peak_ratio = figures.peak_rss_mb / figures.idle_peak_rss_mb if figures.idle_peak_rss_mb else 0
    load_ratio = figures.sampled_rss_mb / figures.idle_rss_mb if figures.idle_rss_mb else 0
    lines = [
        ("secrets", f"{figures.secrets}"),
        ("refreshed", f"{m.refreshed}"),
        (
            "missed",
            f"{m.missed} ({len(m.late)} late, {len(m.never)} never)"
            f"  target none: {_met(none_missed)}",
        ),
        (
            "largest margin missed",
            f"{figures.largest_miss:.1f} s"
            + (
                " (at least: never refreshed)"
                if max(m.never, default=-1) >= max(m.late, default=0)
                else ""
            ),
        ),
        (
            "margin kept",
            f"min {min(m.kept):.1f} s, median {statistics.median(m.kept):.1f} s"
            if m.kept
            else "n/a (none in time)",
        ),
        (
            "CPU per refresh",
            f"{_ms(figures.cpu_per_refresh)} ({figures.cpu_seconds:.1f} s in all); "
            f"{_ms(figures.net_cpu_per_refresh)} net of the idle baseline",
        ),
        (
            "peak RSS",
            f"{figures.peak_rss_mb:.1f} MB ({peak_ratio:.2f}x the idle peak)"
            f"  target < {TARGET_PEAK_RSS_MB:g} MB: {_met(rss_ok)}",
        ),
        (
            "RSS under load",
            f"{figures.sampled_rss_mb:.1f} MB at most in the samples "
            f"({load_ratio:.2f}x the idle RSS)",
        ),
        (
            "idle baseline",
            f"{figures.idle_seconds:.0f} s: peak RSS {figures.idle_peak_rss_mb:.1f} MB, "
            f"RSS {figures.idle_rss_mb:.1f} MB, "
            f"start-up {figures.idle_startup_cpu:.2f} CPU s, "
            f"then {figures.idle_cpu_per_second * 1000:.1f} ms CPU per s",
        ),
        ("wall time", f"{figures.wall_seconds:.0f} s (seeding {figures.seed_seconds:.1f} s)"),
        (
            "token requests",
            f"{figures.token_requests} ({figures.token_requests / figures.secrets:.2f} per secret)",
        ),
        (
            "failed runs",
            ", ".join(f"{n} {kind}" for kind, n in figures.failures.most_common()) or "0",
        ),
        ("scheduler exit code", f"{figures.exit_code}"),
    ]
    print(f"\n== {figures.backend}: results ==")
    for name, value in lines:
        print(f"  {name:<22} {value}")
    if figures.warnings:
        print(f"  scheduler log: {len(figures.warnings)} line(s) at WARNING or above, the last:")
        for line in figures.warnings[-5:]:
            print(f"    {line}")
    if not (none_missed and rss_ok):
        print(f"  => target(s) MISSED on {figures.backend} (a measurement: exit code stays 0)")
    else:
        print(f"  => every target met on {figures.backend}")


def settings_line(args: argparse.Namespace) -> str:
    """The scheduler settings the run used."""
    concurrency = args.concurrency if args.concurrency is not None else "10 (app default)"
    poll = args.poll_seconds if args.poll_seconds is not None else "1 (app default)"
    return f"scheduler concurrency {concurrency}, poll every {poll} s"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are issue 5's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--secrets", type=int, default=10_000, help="secrets to refresh")
    parser.add_argument(
        "--spread-minutes", type=float, default=10.0, help="expiries spread over this long"
    )
    parser.add_argument("--latency-ms", type=float, default=50.0, help="token server latency")
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql", "both"), default="both", help="database"
    )
    parser.add_argument(
        "--concurrency", type=int, default=None, help="TOKENFARM_SCHEDULER_CONCURRENCY"
    )
    parser.add_argument(
        "--poll-seconds", type=float, default=None, help="TOKENFARM_SCHEDULER_POLL_SECONDS"
    )
    args = parser.parse_args(argv)
    if args.secrets < 1 or args.spread_minutes <= 0:
        parser.error("--secrets must be at least 1 and --spread-minutes positive")
    return args


def backends(choice: str) -> Iterator[Backend]:
    """The backends to measure, in order."""
    if choice in ("sqlite", "both"):
        yield "sqlite"
    if choice in ("postgresql", "both"):
        yield "postgresql"


async def main(argv: list[str] | None = None) -> int:
    """Measure each backend and print the figures; 0 even when a target is missed."""
    args = parse_args(argv)
    print(
        f"tokenfarm scheduler benchmark: {args.secrets} secrets expiring over "
        f"{args.spread_minutes:g} min (the first {FIRST_EXPIRY_SECONDS:g} s after seeding), "
        f"token server latency {args.latency_ms:g} ms; {settings_line(args)}",
        flush=True,
    )
    results = []
    for backend in backends(args.backend):
        print(f"\n== {backend} ==", flush=True)
        figures = await run_backend(backend, args)
        report(figures)
        results.append(figures)
    if len(results) > 1:
        print("\n== summary ==")
        print(
            f"  {'backend':<12}{'missed':>8}{'max miss s':>12}{'CPU/refresh':>14}{'peak RSS':>12}"
        )
        for f in results:
            print(
                f"  {f.backend:<12}{f.margins.missed:>8}{f.largest_miss:>12.1f}"
                f"{_ms(f.cpu_per_refresh):>14}{f.peak_rss_mb:>9.1f} MB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
