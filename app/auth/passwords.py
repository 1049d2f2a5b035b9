"""Password hashing with argon2 (argon2-cffi), off the event loop.

One argon2id hash or verification costs tens of milliseconds of CPU and 64 MiB. Done on the event
loop it stalls every other request (4 threads logging in pushed `/healthz` from 1 ms to 755 ms);
`PasswordHashing` runs it in a worker thread (argon2-cffi releases the GIL while it hashes) and at
most `TOKENFARM_PASSWORD_HASH_CONCURRENCY` at a time, so logins queue instead of eating every core.
The plain functions stay for code without an event loop to protect (the CLI's `init`, tests).
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.errors import InvalidInput

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 12


def hash_password(password: str) -> str:
    """An argon2id hash of the password."""
    try:
        return _hasher.hash(password)
    except UnicodeEncodeError:
        # A lone surrogate (from undecodable command-line bytes, say) has no UTF-8 form.
        raise InvalidInput("the password is not valid text: it can't be encoded as UTF-8") from None


def verify_password(password_hash: str, password: str) -> bool:
    """Whether the password matches the hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError, UnicodeEncodeError):
        return False


class PasswordHashing:
    """argon2 in worker threads, `concurrency` at a time; one per app."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        # Bound to an event loop only on first contention: the app may be made outside one.
        self._slots = asyncio.Semaphore(concurrency)

    async def hash(self, password: str) -> str:
        """`hash_password` in a worker thread."""
        async with self._slots:
            return await asyncio.to_thread(hash_password, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """`verify_password` in a worker thread."""
        async with self._slots:
            return await asyncio.to_thread(verify_password, password_hash, password)
