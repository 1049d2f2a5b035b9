"""Password hashing with argon2 (argon2-cffi)."""

from __future__ import annotations

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
