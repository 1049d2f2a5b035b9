"""API keys: `tfk_<key id>_<secret>`; only a SHA-256 of the secret part is ever stored.

The secret part is 32 random bytes, so a fast hash is enough: there is nothing to brute-force.
The key id lets a key be found without scanning, and names it in lists without revealing it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "tfk_"
# What `make_key` makes: 16 hex digits, then URL-safe base64 (which may itself hold `_`).
_KEY = re.compile(r"tfk_([0-9a-f]{16})_([A-Za-z0-9_-]{32,128})")


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: the full key (shown once) and what is stored of it."""

    key: str
    key_id: str
    key_hash: str


def hash_secret(secret: str) -> str:
    """The stored form of a key's secret part."""
    return hashlib.sha256(secret.encode()).hexdigest()


def make_key() -> NewKey:
    """A new random API key."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewKey(key=f"{PREFIX}{key_id}_{secret}", key_id=key_id, key_hash=hash_secret(secret))


def split_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of something shaped like a key, else None."""
    # Only key characters reach the database: PostgreSQL refuses NUL, for one.
    match = _KEY.fullmatch(key)
    return (match[1], match[2]) if match else None


def matches(secret: str, key_hash: str) -> bool:
    """Whether a secret part belongs to a stored hash (constant time)."""
    return hmac.compare_digest(hash_secret(secret), key_hash)
