"""Key pairs for the JWT tests, made once per process (RSA key generation is slow)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


@dataclass(frozen=True)
class KeyPair:
    """A private key as PEM (what a secret holds) and its public key as PEM (what verifies)."""

    private_pem: str
    public_pem: str

    @property
    def body_lines(self) -> list[str]:
        """The base64 lines of the private key: none may ever show up in an answer or a trace."""
        return [line for line in self.private_pem.splitlines() if not line.startswith("-----")]


def _pair(key: Any) -> KeyPair:
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return KeyPair(private, public)


@cache
def rsa_key(name: str = "default", bits: int = 2048) -> KeyPair:
    """An RSA key pair (one per name and size)."""
    return _pair(rsa.generate_private_key(public_exponent=65537, key_size=bits))


@cache
def ec_key(name: str = "default", curve: str = "P-256") -> KeyPair:
    """An EC key pair on P-256 (or P-384)."""
    chosen = ec.SECP256R1() if curve == "P-256" else ec.SECP384R1()
    return _pair(ec.generate_private_key(chosen))


@cache
def ed25519_key() -> KeyPair:
    """An Ed25519 key pair (no algorithm of sign_jwt takes it)."""
    return _pair(ed25519.Ed25519PrivateKey.generate())


def encrypted_rsa_pem(passphrase: bytes = b"passphrase") -> str:
    """The default RSA key, encrypted with a passphrase."""
    key = serialization.load_pem_private_key(rsa_key().private_pem.encode(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    ).decode()


def service_account_key(
    client_email: str, token_uri: str, key: KeyPair | None = None, key_id: str = "sa-key-1"
) -> dict[str, Any]:
    """A Google service-account JSON key file (the fields Google's files have)."""
    pair = key or rsa_key("service-account")
    return {
        "type": "service_account",
        "project_id": "tokenfarm-test",
        "private_key_id": key_id,
        "private_key": pair.private_pem,
        "client_email": client_email,
        "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }


def as_json_text(value: dict[str, Any]) -> str:
    """A JSON key file as the text a user would paste (newlines in the key escaped)."""
    return json.dumps(value)
