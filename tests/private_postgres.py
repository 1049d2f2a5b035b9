"""A private PostgreSQL cluster that a test may stop and start: initdb and pg_ctl on a free port,
as the `postgres` OS user when the tests run as root. Without the binaries the test is skipped
with a reason (a failure under CI=true, as for the shared server in tests/conftest.py)."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import postgres_unavailable
from tests.processes import free_port


def _bin_dir() -> Path | None:
    """The newest PostgreSQL server binaries installed, if any."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    return versions[-1].parent if versions else None


class PrivateCluster:
    """One cluster in a temporary directory; `url` is its `postgres` database's."""

    def __init__(self, bin_dir: Path, directory: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.directory = directory
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.running = False

    def _run(self, *args: str) -> None:
        command = shlex.join(args)
        if os.geteuid() == 0:
            argv = ["su", "postgres", "-s", "/bin/sh", "-c", command]
        else:
            argv = list(args)
        subprocess.run(argv, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        """Create the cluster (trust authentication, no fsync: the test stops it, no machine)."""
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.directory / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off "
            "-c max_connections=60"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-l",
            str(self.directory / "log"),
            "-o",
            options,
            "-w",
            "start",
        )
        self.running = True

    def start_if_stopped(self) -> None:
        """Start it unless it runs (a test that failed may have left it stopped)."""
        if not self.running:
            self.start()

    def stop(self, mode: str = "immediate") -> None:
        """Stop it (`immediate`: as if it crashed)."""
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.directory / "data"), "-m", mode, "stop"
        )
        self.running = False


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A started private cluster, stopped and removed afterwards."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        postgres_unavailable("no PostgreSQL server binaries (initdb) to start a private cluster")
    directory = Path(tempfile.mkdtemp(prefix="tokenfarm-pg-"))
    if os.geteuid() == 0:
        try:
            postgres = pwd.getpwnam("postgres")
        except KeyError:
            postgres_unavailable("no `postgres` OS user to run a private cluster as")
        os.chown(directory, postgres.pw_uid, postgres.pw_gid)
    cluster = PrivateCluster(bin_dir, directory, free_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.running:
            cluster.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)
