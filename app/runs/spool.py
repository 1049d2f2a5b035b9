"""The local spool: where an upstream's answer goes when the database can't take it.

A run keeps every answer that may carry a rotated token the moment it arrives (see
app/runs/storing.py `RunStorage.keep_answer`): in its run row (the recovery slot) and, when the
database fails, here, one file per run under `{TOKENFARM_DATA_DIR}/spool/`. A file is the run's
kept answer encrypted with the keyring, written atomically and durably: a temporary file, fsync,
rename, fsync of the directory. So it survives a crash of the process or of the machine once
`put` returns. The runtime replays the spool into the database when it is back (and at start-up),
`tokenfarm runs recover --spool` does so by hand; replaying is idempotent (app/runs/recovery.py).

While a spooled answer names a secret, no new refresh of it may start (it would present the refresh
token the answer replaced): `pending` says which secrets wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.crypto import Keyring

logger = logging.getLogger("tokenfarm.run")

SUFFIX = ".answer"
_RUN_ID = re.compile(r"^[0-9a-f-]{36}$")


@dataclass(frozen=True)
class SpooledAnswer:
    """One run's kept answer, as read back from the spool."""

    run_id: str
    payload: dict[str, Any]

    @property
    def secrets(self) -> set[str]:
        """The secrets the run meant to write."""
        return {str(base["secret"]) for base in self.payload.get("bases", [])}


class Spool:
    """The spool directory of this data dir; one per process (the runtime's)."""

    def __init__(self, directory: Path, keyring: Keyring) -> None:
        self.directory = directory
        self.keyring = keyring
        # run id -> the secrets its spooled answer writes; refreshed by `entries`.
        self._pending: dict[str, set[str]] = {}
        self.entries()

    def put(self, run_id: str, payload: dict[str, Any]) -> None:
        """Store a run's kept answer durably (replacing an earlier one of the same run); raises
        OSError when the disk can't take it."""
        if not _RUN_ID.match(run_id):
            raise ValueError("not a run id")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = self.directory / f"{run_id}{SUFFIX}"
        temporary = self.directory / f".{run_id}.tmp"
        data = self.keyring.encrypt(payload).encode()
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(descriptor, data)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, final)
        _fsync_directory(self.directory)
        self._pending[run_id] = SpooledAnswer(run_id, payload).secrets

    def remove(self, run_id: str) -> None:
        """Forget a run's spooled answer (it is in the database now)."""
        self._pending.pop(run_id, None)
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{run_id}{SUFFIX}").unlink()
            _fsync_directory(self.directory)

    def entries(self) -> list[SpooledAnswer]:
        """Every spooled answer, oldest first; a file no key decrypts is left for an operator
        (and logged by name)."""
        found: list[SpooledAnswer] = []
        if not self.directory.is_dir():
            self._pending = {}
            return found
        files = sorted(self.directory.glob(f"*{SUFFIX}"), key=_modified)
        for path in files:
            run_id = path.name.removesuffix(SUFFIX)
            try:
                payload = self.keyring.decrypt(path.read_text())
            except FileNotFoundError:
                continue  # replayed meanwhile
            except Exception as exc:  # a foreign key, a torn copy: never fatal, never guessed at
                logger.error("spooled answer %s can't be read: %s", path.name, type(exc).__name__)
                continue
            found.append(SpooledAnswer(run_id, payload))
        self._pending = {entry.run_id: entry.secrets for entry in found}
        return found

    def pending(self, secrets: set[str]) -> list[str]:
        """The runs whose spooled answer writes one of `secrets` (cheap: no disk access)."""
        return sorted(run_id for run_id, names in self._pending.items() if names & secrets)

    def pending_names(self) -> set[str]:
        """Every secret a spooled answer writes."""
        return set().union(*self._pending.values())

    @property
    def empty(self) -> bool:
        """Whether nothing waits in the spool (as this process knows it)."""
        return not self._pending


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _fsync_directory(directory: Path) -> None:
    """Make a rename or an unlink in `directory` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
