"""Secret values encrypted at rest with MultiFernet: the first key encrypts, every key decrypts."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.config import Settings
from app.errors import ConfigurationError

logger = logging.getLogger(__name__)

KEYGEN_HINT = (
    'generate one with `tokenfarm keygen` (or python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())") and set TOKENFARM_ENCRYPTION_KEYS to it'
)


class Keyring:
    """Encrypts and decrypts JSON values; never shows a value in a repr or an error."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ConfigurationError(f"no encryption keys: {KEYGEN_HINT}")
        fernets = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key.strip().encode()))
            except ValueError:
                raise ConfigurationError(
                    f"encryption key #{position} is not a valid Fernet key "
                    f"(32 url-safe base64-encoded bytes): {KEYGEN_HINT}"
                ) from None
        self._first = fernets[0]
        self._fernet = MultiFernet(fernets)

    def __repr__(self) -> str:
        return "Keyring(<redacted>)"

    def encrypt(self, value: Any) -> str:
        """Ciphertext of a JSON-serialisable value."""
        return self._fernet.encrypt(json.dumps(value).encode()).decode()

    def decrypt(self, ciphertext: str) -> Any:
        """The value behind a ciphertext made by any of the keys."""
        try:
            return json.loads(self._fernet.decrypt(ciphertext.encode()))
        except InvalidToken:
            raise ConfigurationError(
                "a stored value can't be decrypted with the configured keys; "
                "TOKENFARM_ENCRYPTION_KEYS must still list the key it was written with"
            ) from None

    def rotate(self, ciphertext: str) -> str:
        """The same value, re-encrypted with the first key."""
        return self._fernet.rotate(ciphertext.encode()).decode()

    def is_current(self, ciphertext: str) -> bool:
        """Whether a ciphertext was made with the first key (key rotation can leave it as it is)."""
        try:
            self._first.decrypt(ciphertext.encode())
        except InvalidToken:
            return False
        return True


def development_secret(path: Path, generate: Callable[[], str], variable: str) -> str:
    """A secret kept in a 0600 file, generated on first use (development only), with a warning."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created with 0600 from the start so the secret is never world-readable, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(generate() + "\n")
        logger.warning(
            "no %s set: generated a development key in %s; keep that file", variable, path
        )
    else:
        logger.warning("using the development key file %s for %s", path, variable)
    return path.read_text().strip()


def load_keyring(settings: Settings) -> Keyring:
    """The keyring from settings; in development a key file is made and kept when none is set."""
    if settings.encryption_keys:
        return Keyring([k for k in settings.encryption_keys.split(",") if k.strip()])
    if settings.environment != "development":
        raise ConfigurationError(
            f"TOKENFARM_ENCRYPTION_KEYS is required when TOKENFARM_ENVIRONMENT is "
            f"{settings.environment!r}: {KEYGEN_HINT}"
        )
    # Losing this file loses every stored value: it is kept next to the SQLite file.
    text = development_secret(
        settings.key_file, lambda: Fernet.generate_key().decode(), "TOKENFARM_ENCRYPTION_KEYS"
    )
    return Keyring([line.strip() for line in text.splitlines() if line.strip()])
