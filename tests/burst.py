"""A burst of HTTP/1.1 GETs over raw sockets, for tests where many callers must arrive at once.

httpx needs about 13 ms per request when a hundred are in flight on this machine, so a burst sent
with it trickles in over a second; raw streams put every request on the wire within a few ms.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Answer:
    """One response: status and JSON body."""

    status: int
    body: Any


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str, str]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, url
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    return reader, writer, f"{parts.hostname}:{parts.port}", parts.path or "/"


async def _read(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    return Answer(status, json.loads(await reader.readexactly(length)))


async def burst_get(urls: list[str], headers: dict[str, str]) -> list[Answer]:
    """GET every URL at once: all connections are opened first, then every request is sent."""
    connections = await asyncio.gather(*(_open(url) for url in urls))
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    for _, writer, host, path in connections:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()
        )
    try:
        return list(await asyncio.gather(*(_read(reader) for reader, *_ in connections)))
    finally:
        for _, writer, _, _ in connections:
            writer.close()
