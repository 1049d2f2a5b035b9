"""The signature scheme: what a receiver checks, and what it must refuse."""

from __future__ import annotations

import hashlib
import hmac
import time

from app.db import utcnow
from app.events import SecretStatusChanged
from app.notifications.notifier import encode, event_type, payload, sign, verify_signature

SECRET = "signing-secret-for-tests"
BODY = '{"id":"1","type":"secret.failing","secret":"ACCESS_TOKEN"}'


def change(old: str, new: str) -> SecretStatusChanged:
    """A status change as the runner emits it."""
    return SecretStatusChanged("ACCESS_TOKEN", old, new, 1, None, "run-1", utcnow())


class TestSign:
    def test_is_hex_hmac_sha256_over_timestamp_dot_body(self) -> None:
        expected = hmac.new(SECRET.encode(), f"1700000000.{BODY}".encode(), hashlib.sha256)

        assert sign(SECRET, 1700000000, BODY) == f"v1={expected.hexdigest()}"


class TestVerifySignature:
    def test_a_genuine_delivery_verifies(self) -> None:
        now = int(time.time())

        assert verify_signature(SECRET, str(now), BODY, sign(SECRET, now, BODY))
        assert verify_signature(SECRET, str(now), BODY.encode(), sign(SECRET, now, BODY))

    def test_a_tampered_body_fails(self) -> None:
        now = int(time.time())
        signature = sign(SECRET, now, BODY)

        assert not verify_signature(
            SECRET, str(now), BODY.replace("failing", "recovered"), signature
        )
        assert not verify_signature(SECRET, str(now), BODY + " ", signature)

    def test_a_changed_timestamp_fails(self) -> None:
        now = int(time.time())

        assert not verify_signature(SECRET, str(now - 1), BODY, sign(SECRET, now, BODY))

    def test_another_secret_fails(self) -> None:
        now = int(time.time())

        assert not verify_signature("another-secret", str(now), BODY, sign(SECRET, now, BODY))

    def test_an_old_timestamp_is_refused_even_when_signed(self) -> None:
        old = int(time.time()) - 301

        assert not verify_signature(SECRET, str(old), BODY, sign(SECRET, old, BODY))
        assert verify_signature(
            SECRET, str(old), BODY, sign(SECRET, old, BODY), tolerance_seconds=600
        )

    def test_garbage_is_refused_without_raising(self) -> None:
        now = int(time.time())
        signature = sign(SECRET, now, BODY)

        assert not verify_signature(SECRET, "yesterday", BODY, signature)
        assert not verify_signature(SECRET, str(now), b"\xff\xfe", signature)
        assert not verify_signature(SECRET, str(now), BODY, "")
        assert not verify_signature(SECRET, str(now), BODY, signature.removeprefix("v1="))


class TestEvents:
    def test_status_changes_map_to_event_types(self) -> None:
        assert event_type(change("ok", "failing")) == "secret.failing"
        assert event_type(change("ok", "needs_reauth")) == "secret.needs_reauth"
        assert event_type(change("failing", "needs_reauth")) == "secret.needs_reauth"
        assert event_type(change("failing", "ok")) == "secret.recovered"
        assert event_type(change("needs_reauth", "ok")) == "secret.recovered"
        assert event_type(change("failing", "failing")) is None

    def test_payload_is_compact_ascii_json(self) -> None:
        body = encode(payload(change("ok", "failing"), "secret.failing", "event-1"))

        assert body.isascii()
        assert ", " not in body and '": ' not in body
        assert body.startswith('{"id":"event-1","type":"secret.failing"')
