"""Run any ASGI app under a real uvicorn server in a background thread on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn
from starlette.types import ASGIApp

LOOPBACK_HOST = "127.0.0.1"


class LoopbackServer:
    """Context manager serving an ASGI app on a loopback port from a daemon thread."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        port: int = 0,
        lifespan: Literal["auto", "on", "off"] = "on",
        log_level: str = "warning",
        log_config: dict[str, Any] | None = None,
        startup_timeout: float = 5.0,
        shutdown_timeout: float = 5.0,
        graceful_shutdown_seconds: int = 2,
    ) -> None:
        """Prepare (but do not start) a server for `app` on `port` (0 picks a free port)."""
        self.app = app
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self._requested_port = port
        self._config_kwargs: dict[str, Any] = {
            "lifespan": lifespan,
            "log_level": log_level,
            # None keeps uvicorn from calling logging.config.dictConfig(), which would rewire
            # the host process' logging (and pytest's caplog) every time a server starts.
            "log_config": log_config,
            "access_log": False,
            # Bounds how long an in-flight request (e.g. a "hang" fault) can delay __exit__.
            "timeout_graceful_shutdown": graceful_shutdown_seconds,
            # Nothing served here needs websockets; skipping them avoids importing a stack
            # whose deprecation warnings would be errors under filterwarnings=error.
            "ws": "none",
        }
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The TCP port the server is bound to."""
        if self._port is None:
            raise RuntimeError("LoopbackServer is not running")
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{LOOPBACK_HOST}:{self.port}"

    @property
    def server(self) -> uvicorn.Server:
        """The underlying uvicorn server (for advanced tests)."""
        if self._server is None:
            raise RuntimeError("LoopbackServer is not running")
        return self._server

    def __enter__(self) -> Self:
        """Bind the socket, start uvicorn in a daemon thread and wait until it accepts requests."""
        if self._thread is not None:
            raise RuntimeError("LoopbackServer instances are single-use")
        # Binding here (instead of letting uvicorn do it) is what makes port 0 usable: the
        # kernel-chosen port is known before the server thread even starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK_HOST, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, host=LOOPBACK_HOST, port=self._port, **self._config_kwargs
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run, name=f"loopback-uvicorn-{self._port}", daemon=True
        )
        self._thread.start()

        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        if not self._server.started:
            self._stop()
            self._port = None
            raise RuntimeError(
                f"uvicorn did not start on {LOOPBACK_HOST} within {self.startup_timeout}s"
            ) from self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Ask uvicorn to exit, force it if it lingers, and join the thread."""
        stopped = self._stop()
        self._port = None
        # Raising while another exception propagates would hide the test's real failure.
        if exc_type is not None:
            return
        if not stopped:
            raise RuntimeError(f"uvicorn thread did not stop within {2 * self.shutdown_timeout}s")
        if self._error is not None:
            raise RuntimeError("uvicorn server thread failed") from self._error

    def _run(self) -> None:
        """Thread target: run uvicorn, keeping any failure for the main thread to report."""
        assert self._server is not None
        assert self._sock is not None
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # SystemExit too: uvicorn exits on startup failure
            self._error = exc

    def _stop(self) -> bool:
        """Stop the server thread; return True when it has finished."""
        assert self._server is not None
        assert self._thread is not None
        self._server.should_exit = True
        self._thread.join(self.shutdown_timeout)
        if self._thread.is_alive():
            # force_exit skips waiting for open connections and the lifespan shutdown.
            self._server.force_exit = True
            self._thread.join(self.shutdown_timeout)
        if self._sock is not None:
            # uvicorn closes it on a normal shutdown, but not when startup failed early.
            self._sock.close()
        return not self._thread.is_alive()
