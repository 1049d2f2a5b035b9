"""Every form a value takes on the wire, and the origins a secret's value may be sent to.

One home for both questions a run asks of a value: what to blank out of anything shown (the
redactor adds every form) and whether an outgoing request carries it (a request is searched for
every form). A value travels raw (a header, a JSON body), percent-encoded (a query string, a form
body, a path), base64 (basic auth, many APIs) or JSON-escaped (inside a JSON string), and an
upstream may echo any of these back in an error.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit

from app.errors import DestinationNotAllowed

MIN_SENSITIVE_LENGTH = 4
MIN_SENSITIVE_DIGITS = 6
DEFAULT_PORTS = {"http": 80, "https": 443}


def wire_forms(value: str) -> set[str]:
    """The value as it may appear on the wire: raw, percent-encoded (`quote`, `quote_plus`, with
    and without `/` kept), base64 and base64url (with and without padding), JSON-escaped."""
    raw = value.encode()
    standard = base64.b64encode(raw).decode("ascii")
    urlsafe = base64.urlsafe_b64encode(raw).decode("ascii")
    return {
        value,
        quote(value),
        quote(value, safe=""),
        quote_plus(value),
        quote_plus(value, safe="/"),
        standard,
        standard.rstrip("="),
        urlsafe,
        urlsafe.rstrip("="),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }


def basic_credentials(username: str, password: str) -> str:
    """The `Authorization: Basic` credentials of a pair, as HTTP clients build them (RFC 7617)."""
    return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def sensitive_strings(value: Any) -> Iterator[str]:
    """Every string of a (nested) value worth treating as sensitive: strings of at least four
    characters, the fields of JSON-string values, and numbers of at least six digits."""
    if isinstance(value, str):
        if len(value) >= MIN_SENSITIVE_LENGTH:
            yield value
        # Bindings address into JSON-string secrets (`secrets.SA_KEY.private_key`), so the
        # fields inside are sensitive on their own.
        if value[:1] in ("{", "["):
            try:
                parsed = json.loads(value)
            except ValueError:
                return
            if isinstance(parsed, (dict, list)):
                yield from sensitive_strings(parsed)
    elif isinstance(value, dict):
        for item in value.values():
            yield from sensitive_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from sensitive_strings(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        # Numeric secrets (PINs, account numbers) matter when long enough.
        if len(str(value)) >= MIN_SENSITIVE_DIGITS:
            yield str(value)


# --- origins ---------------------------------------------------------------------------------


def origin(scheme: str, host: str, port: int | None) -> str:
    """`https://github.com`, `http://127.0.0.1:8080`: lower case, the default port left out."""
    scheme = scheme.lower()
    host = host.lower().rstrip(".")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    if port is None or DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_of_url(url: str) -> str:
    """The origin of an absolute URL; ValueError when it has none."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an absolute http:// or https:// URL")
    return origin(parts.scheme, parts.hostname, parts.port)


def parse_origin(text: str) -> str:
    """An allowed destination as written (`https://github.com`, `http://host:8080`), normalized;
    ValueError saying what is wrong: another scheme, a path, a query, credentials."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} is not an origin (scheme://host[:port])") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"{text!r}: an origin is https:// or http://")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r} is not an origin (scheme://host[:port], no credentials)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in text:
        raise ValueError(f"{text!r}: an origin has no path, query or fragment (scheme://host)")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        host = parts.hostname
    return origin(parts.scheme, host, port)


# --- where a secret may go -------------------------------------------------------------------


def decoded_views(texts: Iterable[str]) -> list[str]:
    """The texts of a request and what they decode to: percent-decoding (a URL, a form body)
    and the `id:secret` pair of basic-auth credentials."""
    views: list[str] = []
    for text in texts:
        views.extend((text, unquote(text), unquote_plus(text)))
        scheme, _, credentials = text.partition(" ")
        if scheme.lower() == "basic" and credentials:
            try:
                views.append(base64.b64decode(credentials.strip(), validate=True).decode())
            except (binascii.Error, UnicodeDecodeError):
                pass
    return views


def check_destination(
    secrets: Mapping[str, Any],
    allowed_destinations: Mapping[str, Sequence[str]],
    destination: str,
    texts: Iterable[str],
) -> None:
    """Refuse (`DestinationNotAllowed`) a request to `destination` (an origin) whose texts (URL,
    headers, body) carry any wire form of a secret that may not be sent there.

    Values made from a secret (interpolated into longer text, encoded) carry it as a substring,
    so the search covers them too. A secret that declares no allowed destinations may go
    anywhere (see docs/concepts.md). Key material that `sign_jwt` signs with never appears.
    """
    views: list[str] | None = None
    for name in sorted(allowed_destinations):
        allowed = allowed_destinations[name]
        if destination in allowed or name not in secrets:
            continue
        # Case-blind: a host name is lower-cased on its way out (and a DNS lookup of
        # `SECRET.attacker.example` would carry it before any connection).
        forms = {
            form.lower() for text in sensitive_strings(secrets[name]) for form in wire_forms(text)
        }
        if not forms:
            continue
        if views is None:
            views = [view.lower() for view in decoded_views(texts)]
        if any(form in view for view in views for form in forms):
            listed = ", ".join(allowed) if allowed else "nowhere"
            raise DestinationNotAllowed(
                f"secret {name!r} may be sent only to {listed}; the request to {destination} "
                "carries it, so nothing was sent (add the origin to the secret's "
                "allowed_destinations if it belongs there)",
                secret=name,
                destination=destination,
            )
