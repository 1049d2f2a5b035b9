"""The signature schemes: Standard Webhooks (checked against its reference implementation) and
the deprecated `X-Tokenfarm-Signature`; what a receiver checks, and what it must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks import WebhookVerificationError

from app.db import utcnow
from app.events import SecretStatusChanged
from app.notifications.notifier import encode, event_type, payload
from app.notifications.signing import (
    new_signing_secret,
    sign,
    signature_header,
    signing_key,
    standard_form,
    standard_headers,
    standard_signature,
    verify_delivery,
    verify_signature,
)

SECRET = "signing-secret-for-tests"
BODY = '{"id":"1","type":"secret.failing","secret":"ACCESS_TOKEN"}'
MESSAGE_ID = "0b7e4a9e-8d7c-4f3a-9a56-2f1e1c6b5d4a"


def change(old: str, new: str) -> SecretStatusChanged:
    """A status change as the runner emits it."""
    return SecretStatusChanged("ACCESS_TOKEN", old, new, 1, None, "run-1", utcnow())


class TestSigningSecrets:
    def test_a_new_secret_is_whsec_and_the_base64_of_32_random_bytes(self) -> None:
        first, second = new_signing_secret(), new_signing_secret()

        assert first.startswith("whsec_") and first != second
        assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32
        assert signing_key(first) == base64.b64decode(first.removeprefix("whsec_"))

    def test_an_older_secret_keys_with_its_text_and_has_a_whsec_form(self) -> None:
        assert signing_key(SECRET) == SECRET.encode()
        assert standard_form(SECRET) == "whsec_" + base64.b64encode(SECRET.encode()).decode()
        assert signing_key(standard_form(SECRET)) == SECRET.encode()
        fresh = new_signing_secret()
        assert standard_form(fresh) == fresh


class TestStandardSignature:
    def test_is_base64_hmac_sha256_over_id_dot_timestamp_dot_body(self) -> None:
        secret = new_signing_secret()
        signed = f"{MESSAGE_ID}.1700000000.{BODY}".encode()
        digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()

        expected = f"v1,{base64.b64encode(digest).decode()}"
        assert standard_signature(secret, MESSAGE_ID, 1700000000, BODY) == expected

    def test_matches_the_reference_implementation(self) -> None:
        secret = new_signing_secret()
        at = datetime.fromtimestamp(1700000000, tz=UTC)

        reference = StandardWebhook(secret).sign(MESSAGE_ID, at, BODY)

        assert standard_signature(secret, MESSAGE_ID, 1700000000, BODY) == reference

    def test_the_reference_implementation_verifies_each_secret_of_a_rotation(self) -> None:
        new, old = new_signing_secret(), new_signing_secret()
        now = int(time.time())
        headers = standard_headers([new, old], MESSAGE_ID, now, BODY)

        assert len(headers["webhook-signature"].split(" ")) == 2
        for secret in (new, old):
            assert StandardWebhook(secret).verify(BODY, headers) == {
                "id": "1",
                "type": "secret.failing",
                "secret": "ACCESS_TOKEN",
            }
            assert verify_delivery(secret, BODY, headers)
        with pytest.raises(WebhookVerificationError):
            StandardWebhook(new_signing_secret()).verify(BODY, headers)
        assert not verify_delivery(new_signing_secret(), BODY, headers)


class TestVerifyDelivery:
    def headers(self, secret: str, at: int | None = None) -> dict[str, str]:
        """Headers the reference implementation signs."""
        sent_at = int(time.time()) if at is None else at
        signature = StandardWebhook(secret).sign(
            MESSAGE_ID, datetime.fromtimestamp(sent_at, tz=UTC), BODY
        )
        return {
            "Webhook-Id": MESSAGE_ID,
            "Webhook-Timestamp": str(sent_at),
            "Webhook-Signature": signature,
        }

    def test_a_delivery_signed_by_the_reference_implementation_verifies(self) -> None:
        secret = new_signing_secret()

        assert verify_delivery(secret, BODY, self.headers(secret))
        assert verify_delivery(secret, BODY.encode(), self.headers(secret))

    @pytest.mark.parametrize(
        ("header", "value"),
        [
            ("Webhook-Id", "another-id"),
            ("Webhook-Timestamp", "SHIFT"),
            ("Webhook-Signature", "v1,AAAA"),
            ("Webhook-Signature", ""),
            ("Webhook-Id", ""),
            ("Webhook-Timestamp", "yesterday"),
        ],
    )
    def test_a_changed_header_fails(self, header: str, value: str) -> None:
        secret = new_signing_secret()
        headers = self.headers(secret)
        headers[header] = str(int(headers["Webhook-Timestamp"]) - 1) if value == "SHIFT" else value

        assert not verify_delivery(secret, BODY, headers)

    def test_a_tampered_body_or_another_secret_fails(self) -> None:
        secret = new_signing_secret()

        assert not verify_delivery(
            secret, BODY.replace("failing", "recovered"), self.headers(secret)
        )
        assert not verify_delivery(secret, BODY + " ", self.headers(secret))
        assert not verify_delivery(secret, b"\xff\xfe", self.headers(secret))
        assert not verify_delivery(new_signing_secret(), BODY, self.headers(secret))

    def test_an_old_timestamp_is_refused_even_when_signed(self) -> None:
        secret = new_signing_secret()
        old = int(time.time()) - 301

        assert not verify_delivery(secret, BODY, self.headers(secret, old))
        assert verify_delivery(secret, BODY, self.headers(secret, old), tolerance_seconds=600)

    def test_signature_header_lists_newest_first(self) -> None:
        new, old = new_signing_secret(), new_signing_secret()

        header = signature_header([new, old], MESSAGE_ID, 1700000000, BODY)

        assert header.split(" ") == [
            standard_signature(new, MESSAGE_ID, 1700000000, BODY),
            standard_signature(old, MESSAGE_ID, 1700000000, BODY),
        ]


class TestLegacySign:
    def test_is_hex_hmac_sha256_over_timestamp_dot_body(self) -> None:
        expected = hmac.new(SECRET.encode(), f"1700000000.{BODY}".encode(), hashlib.sha256)

        assert sign(SECRET, 1700000000, BODY) == f"v1={expected.hexdigest()}"


class TestLegacyVerifySignature:
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
