"""`tokenfarm connect NAME`: connect a secret to its provider through a running tokenfarm.

Unlike the operator commands, it talks to the server over HTTP (`TOKENFARM_ADDR`, default
http://127.0.0.1:8000) with `TOKENFARM_TOKEN` (an API key or a login token holding
`secrets.connect:NAME`): the server owns the flow, polls the provider and stores the tokens.
With `--device` it prints a user code and waits with a spinner until the secret is connected
or the flow ends; without it, it prints a single-use connect link to open in a browser.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console

from app.cli.core import _fail

# The commands of this module; app/cli/__init__.py lists them and loads them when they run.
commands = typer.Typer()

DEFAULT_ADDR = "http://127.0.0.1:8000"
STATUS_POLL_SECONDS = 1.0
# Past the code's expiry, how long to keep asking before giving up on the server's answer.
GRACE_SECONDS = 30


def _die(message: str, code: int = 1) -> NoReturn:
    _fail(message, code)
    raise AssertionError("unreachable")


def _answer(response: httpx.Response, addr: str) -> dict[str, Any]:
    """The JSON body of a 2xx answer; otherwise exit 1 with the server's own message."""
    if response.is_success:
        body: dict[str, Any] = response.json()
        return body
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"{addr} answered {response.status_code}"
    if response.status_code == 401:
        message += " (TOKENFARM_TOKEN: an API key or a login token)"
    _die(message)


def _request(client: httpx.Client, method: str, path: str, addr: str) -> dict[str, Any]:
    try:
        return _answer(client.request(method, path), addr)
    except httpx.HTTPError as exc:
        _die(f"can't reach tokenfarm at {addr} ({type(exc).__name__}); set TOKENFARM_ADDR")


@commands.command()
def connect(
    name: Annotated[str, typer.Argument(help="The connected secret, e.g. GITHUB_TOKEN.")],
    device: Annotated[
        bool,
        typer.Option(
            "--device",
            help="Use the device grant (RFC 8628): print a code to enter at the provider, wait.",
        ),
    ] = False,
) -> None:
    """Connect a secret to its provider (a link to open, or --device: a code), via the server."""
    addr = os.environ.get("TOKENFARM_ADDR", DEFAULT_ADDR).rstrip("/")
    token = os.environ.get("TOKENFARM_TOKEN", "")
    if not token:
        _die(
            "set TOKENFARM_TOKEN to an API key (or a login token) holding "
            f"secrets.connect:{name}, and TOKENFARM_ADDR to the server (default {DEFAULT_ADDR})",
            2,
        )
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=addr, headers=headers, timeout=30.0) as client:
        if not device:
            link = _request(client, "POST", f"/v1/secrets/{name}/connect-links", addr)
            typer.echo(
                f"Open this link to connect {name} (single use, until {link['expires_at']}):"
            )
            typer.echo(f"  {link['url']}")
            return
        started = _request(client, "POST", f"/v1/secrets/{name}/device-authorizations", addr)
        where = started.get("verification_uri_complete") or started["verification_uri"]
        typer.echo(f"To connect {name}, open {started['verification_uri']}")
        typer.echo(f"and enter the code:  {started['user_code']}")
        if where != started["verification_uri"]:
            typer.echo(f"(or open {where})")
        _wait(client, addr, name, started)


def _wait(client: httpx.Client, addr: str, name: str, started: dict[str, Any]) -> None:
    """Ask the server how the flow goes until it ends; exit 1 unless connected."""
    deadline = time.monotonic() + int(started["expires_in"]) + GRACE_SECONDS
    spinner = Console(stderr=True, highlight=False)
    with spinner.status("waiting for the code to be entered…", spinner="dots"):
        while True:
            flow = _request(client, "GET", started["status_url"], addr)
            if flow["status"] != "pending":
                break
            if time.monotonic() >= deadline:
                _die(f"the code expired and the server still says pending; check {name}")
            time.sleep(STATUS_POLL_SECONDS)
    if flow["status"] == "connected":
        typer.secho(f"connected: {name}", fg=typer.colors.GREEN)
        sys.stdout.flush()
        return
    _die(f"{flow['status']}: {flow.get('message') or 'the device grant ended'}")
