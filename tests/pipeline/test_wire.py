"""Every form a value takes on the wire, as the redactor and the destination check see them."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest

from app.errors import DestinationNotAllowed
from app.pipeline.context import REDACTED, Redactor
from app.pipeline.wire import check_destination, parse_origin, wire_forms

VALUE = 'rt+9x/7q="é'


@pytest.fixture
def finalize_request_sessions() -> None:
    """No app here, so no request sessions to finalize."""


class TestWireForms:
    def test_each_encoding_is_there(self) -> None:
        raw = VALUE.encode()
        expected = {
            VALUE,
            quote(VALUE),
            quote(VALUE, safe=""),
            quote_plus(VALUE),
            base64.b64encode(raw).decode(),
            base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
            json.dumps(VALUE)[1:-1],
            json.dumps(VALUE, ensure_ascii=False)[1:-1],
        }
        assert expected <= wire_forms(VALUE)

    def test_the_redactor_blanks_every_form_and_the_basic_auth_pair(self) -> None:
        redactor = Redactor()
        redactor.add({"nested": VALUE})
        redactor.add_basic_auth("client-id", VALUE)
        pair = base64.b64encode(f"client-id:{VALUE}".encode()).decode()
        shown = redactor.text(" ".join([*sorted(wire_forms(VALUE)), pair, "kept"]))
        assert set(shown.split()) == {REDACTED, "kept"}


class TestOrigins:
    @pytest.mark.parametrize(
        ("written", "origin"),
        [
            ("https://GitHub.com", "https://github.com"),
            ("https://github.com:443/", "https://github.com"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("https://[::1]:8443", "https://[::1]:8443"),
        ],
    )
    def test_normalized(self, written: str, origin: str) -> None:
        assert parse_origin(written) == origin

    @pytest.mark.parametrize(
        "written", ["github.com", "ftp://github.com", "https://github.com/x", "https://a@b.com"]
    )
    def test_anything_else_is_refused(self, written: str) -> None:
        with pytest.raises(ValueError, match="origin"):
            parse_origin(written)

    def test_a_restricted_secret_elsewhere_is_refused_without_its_value(self) -> None:
        secrets = {"KEY": VALUE, "FREE": "goes-anywhere"}
        allowed = {"KEY": ("https://auth.example.com",)}
        body = f"assertion={quote_plus(VALUE)}&other=goes-anywhere"
        check_destination(secrets, allowed, "https://auth.example.com", [body])
        check_destination(secrets, allowed, "https://evil.example", ["goes-anywhere"])
        with pytest.raises(DestinationNotAllowed) as refused:
            check_destination(secrets, allowed, "https://evil.example", [body])
        assert VALUE not in refused.value.message
        assert refused.value.extra == {"secret": "KEY", "destination": "https://evil.example"}
