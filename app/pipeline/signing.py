"""What the `sign_jwt` node does: signs claims with a key held in a secret (RFC 7523 assertions).

Keys are loaded with `cryptography` before python-jose sees them, so an unusable key fails with a
message that says what is wrong with it, never what it is: library errors may quote key material.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwt
from jose.exceptions import JOSEError

from app.errors import BindingError
from app.pipeline.bindings import dig

if TYPE_CHECKING:
    from app.pipeline.context import RunContext
    from app.pipeline.nodes.sign_jwt import SignJwtNode

# RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
MIN_HMAC_KEY_BYTES = 32
# RFC 7518 §3.3: RSA keys of 2048 bits or more.
MIN_RSA_KEY_BITS = 2048
PEM_MARKER = "-----BEGIN"


def _describe(key: Any) -> str:
    """What kind of key this is, for an error message (never the key itself)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA key of {key.key_size} bits"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC key on {key.curve.name}"
    return f"a {type(key).__name__.lstrip('_').removesuffix('PrivateKey') or 'different'} key"


def _is_json_object(text: str) -> bool:
    """Whether a secret's text is a JSON object (then the key sits in one of its fields)."""
    if not text.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def key_material(node: SignJwtNode, secrets_: dict[str, Any]) -> str:
    """The key text from the node's secret (and field), or BindingError saying what is missing."""
    where = f"secret {node.key_secret!r}"
    value = secrets_.get(node.key_secret)
    if value is None:
        raise BindingError(f"sign_jwt: {where} has no value")
    if node.key_field is not None:
        value = dig(value, [node.key_field])
        where = f"field {node.key_field!r} of {where}"
        if value is None:
            raise BindingError(f"sign_jwt: {where} is missing (is the secret a JSON object?)")
    elif isinstance(value, dict) or (isinstance(value, str) and _is_json_object(value)):
        raise BindingError(
            f"sign_jwt: {where} holds a JSON object; name the field with the key in 'key_field' "
            "(e.g. private_key)"
        )
    if not isinstance(value, str) or not value.strip():
        raise BindingError(f"sign_jwt: {where} must hold the key as text")
    return value


def load_key(algorithm: str, text: str, where: str) -> Any:
    """A signing key python-jose accepts, checked against the algorithm."""
    if algorithm == "HS256":
        if PEM_MARKER in text:
            raise BindingError(
                f"sign_jwt: {where} holds a PEM key; HS256 signs with a shared secret"
            )
        raw = text.encode()
        if len(raw) < MIN_HMAC_KEY_BYTES:
            raise BindingError(
                f"sign_jwt: {where} is shorter than {MIN_HMAC_KEY_BYTES} bytes, too short for "
                "HS256 (RFC 7518 §3.2)"
            )
        return raw
    if "\n" not in text and "\\n" in text:
        # A PEM pasted from a JSON file with its newlines still escaped.
        text = text.replace("\\n", "\n")
    if PEM_MARKER not in text:
        raise BindingError(f"sign_jwt: {where} is not a PEM private key")
    try:
        key = serialization.load_pem_private_key(text.strip().encode(), password=None)
    except TypeError:
        raise BindingError(
            f"sign_jwt: {where} is an encrypted private key; store it without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # `from None`: the parser's message may quote the key's text.
        raise BindingError(f"sign_jwt: {where} can't be read as a PEM private key") from None
    if algorithm == "RS256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise BindingError(f"sign_jwt: RS256 needs an RSA key; {where} is {_describe(key)}")
        if key.key_size < MIN_RSA_KEY_BITS:
            raise BindingError(
                f"sign_jwt: {where} is {_describe(key)}; RS256 needs {MIN_RSA_KEY_BITS} or more"
            )
        return key
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise BindingError(f"sign_jwt: ES256 needs an EC key on P-256; {where} is {_describe(key)}")
    return key


def _present(values: dict[str, Any]) -> dict[str, Any]:
    """Drop entries whose binding rendered to null (an optional `sub`, a missing `kid`)."""
    return {name: value for name, value in values.items() if value is not None}


def sign_into(node: SignJwtNode, ctx: RunContext, entry: dict[str, Any]) -> None:
    """Sign a JWT into the node's variable; the token is a credential, so it is redacted."""
    entry["algorithm"] = node.algorithm
    entry["into"] = node.into
    where = f"secret {node.key_secret!r}"
    if node.key_field is not None:
        where = f"field {node.key_field!r} of {where}"
    key = load_key(node.algorithm, key_material(node, ctx.secrets), where)
    header = _present(ctx.render(node.header))
    claims = _present(ctx.render(node.claims))
    now = int(ctx.clock())
    claims.setdefault("iat", now)
    claims.setdefault("exp", now + node.expires_in_seconds)
    claims.setdefault("jti", secrets.token_urlsafe(24))
    # Names only: claim values may identify people or carry secrets of their own.
    entry["claims"] = sorted(claims)
    if header:
        entry["header"] = sorted(header)
    try:
        token = jwt.encode(claims, key, algorithm=node.algorithm, headers=header)
    except (JOSEError, TypeError, ValueError):
        raise BindingError(
            "sign_jwt: the claims or header can't be signed (every value must be JSON)"
        ) from None
    ctx.redactor.add(token)
    ctx.variables[node.into] = token
