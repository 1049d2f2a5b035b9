"""`tokenfarm` commands run in the test's own process, through typer's runner.

A fresh interpreter per command cost a second or more on a loaded machine; the commands' output
and exit codes are the same in process. What a command could leak into the next test is reset:
the environment is set for the call only (as a child's would be), the cached settings are
dropped before and after, logging is put back as it was, and the command runs in a thread of
its own, so that its `asyncio.run` never meets the test's running event loop. Signals, the entry
point and long-lived processes (`serve`, `scheduler`, `demo`, `runs --follow`) stay real
processes (tests/processes.py); tests/cli/test_runner.py checks the isolation.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import traceback
from dataclasses import dataclass

from typer.testing import CliRunner

from app.cli import cli
from app.config import get_settings


def invoke(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `tokenfarm ARGS` in this process with `env` added to the environment and `stdin`
    piped in; answers what `subprocess.run` would (returncode, stdout, stderr)."""
    outcome: list[subprocess.CompletedProcess[str]] = []
    thread = threading.Thread(
        target=lambda: outcome.append(_invoke(list(args), env, stdin)), name="tokenfarm-cli"
    )
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"tokenfarm {' '.join(args)} did not finish in {timeout} s"
    return outcome[0]


@dataclass
class _LoggingState:
    """What `configure_logging` changes: every logger's level, handlers and propagation, and the
    formatters of the root's handlers."""

    loggers: dict[str, tuple[int, list[logging.Handler], bool, bool]]
    formatters: list[tuple[logging.Handler, logging.Formatter | None]]

    @classmethod
    def save(cls) -> _LoggingState:
        """The state now."""
        named = [
            (name, logger)
            for name, logger in logging.Logger.manager.loggerDict.items()
            if isinstance(logger, logging.Logger)
        ]
        loggers = {
            name: (logger.level, logger.handlers[:], logger.propagate, logger.disabled)
            for name, logger in [("", logging.getLogger()), *named]
        }
        return cls(loggers, [(h, h.formatter) for h in logging.getLogger().handlers])

    def restore(self) -> None:
        """Put it back (a handler a command added, on a stream that is closed now, goes)."""
        for name, (level, handlers, propagate, disabled) in self.loggers.items():
            logger = logging.getLogger(name or None)
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate, logger.disabled = propagate, disabled
        for handler, formatter in self.formatters:
            handler.setFormatter(formatter)


def _invoke(
    args: list[str], env: dict[str, str], stdin: str | None
) -> subprocess.CompletedProcess[str]:
    get_settings.cache_clear()
    logging_state = _LoggingState.save()
    try:
        result = CliRunner().invoke(cli, args, input=stdin, env=env, prog_name="tokenfarm")
    finally:
        logging_state.restore()
        get_settings.cache_clear()
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # A crash: a real process would have printed the traceback.
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(
        ["tokenfarm", *args], result.exit_code, result.stdout, stderr
    )
