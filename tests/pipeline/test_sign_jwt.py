"""The sign_jwt node through the real API: tokens reach a loopback echo server and are verified
there with the public key, exactly as a token endpoint would."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt

from tests.conftest import create_secret
from tests.pipeline.conftest import Echo, create_service, run_action, run_trace, run_unchecked
from tests.signing_keys import (
    KeyPair,
    ec_key,
    ed25519_key,
    encrypted_rsa_pem,
    rsa_key,
    service_account_key,
)

HMAC_KEY = "hmac-shared-secret-canary-0123456789abcdef"
AUDIENCE = "https://auth.example.com/oauth/token"


def sign(
    algorithm: str = "RS256", key_secret: str = "SIGNING_KEY", **fields: Any
) -> dict[str, Any]:
    """A sign_jwt node writing into `jwt`."""
    return {
        "type": "sign_jwt",
        "algorithm": algorithm,
        "key_secret": key_secret,
        "claims": {"iss": "tokenfarm", "aud": AUDIENCE},
        "into": "jwt",
        **fields,
    }


def send(echo: Echo) -> dict[str, Any]:
    """A web_request carrying the signed token to the echo server, as an assertion would go."""
    return {
        "type": "web_request",
        "method": "POST",
        "url": echo.url("/token"),
        "body": {"form": {"assertion": "{{ vars.jwt }}"}},
    }


def sent_token(echo: Echo) -> str:
    """The one token the echo server received."""
    [request] = echo.state.to("/token")
    token: str = request.form()["assertion"][0]
    return token


def verify(token: str, key: str, algorithm: str) -> dict[str, Any]:
    """The claims of a token whose signature verifies with `key` (and whose aud is ours)."""
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=[algorithm], audience=AUDIENCE)
    return claims


def assert_no_key_material(text: str, pair: KeyPair) -> None:
    """No line of the private key appears in `text`."""
    assert not any(line in text for line in pair.body_lines)


async def signing_key(client: httpx.AsyncClient, value: Any, name: str = "SIGNING_KEY") -> None:
    """A secret holding a key, one value for all environments."""
    await create_secret(client, name, value, environment_specific=False)


class TestSigning:
    @pytest.mark.parametrize(
        ("algorithm", "pair"),
        [("RS256", rsa_key), ("ES256", ec_key)],
        ids=["RS256", "ES256"],
    )
    async def test_round_trip_verifies_with_the_public_key(
        self, client: httpx.AsyncClient, echo: Echo, algorithm: str, pair: Any
    ) -> None:
        keys: KeyPair = pair()
        await signing_key(client, keys.private_pem)
        response = await run_action(client, [sign(algorithm), send(echo)])
        assert response.status_code == 200, response.text
        token = sent_token(echo)
        assert jwt.get_unverified_header(token)["alg"] == algorithm
        claims = verify(token, keys.public_pem, algorithm)
        assert claims["iss"] == "tokenfarm"
        # Signed by this key and no other.
        other = rsa_key("other") if algorithm == "RS256" else ec_key("other")
        with pytest.raises(jwt.JWTError):
            verify(token, other.public_pem, algorithm)

    async def test_hs256_round_trip(self, client: httpx.AsyncClient, echo: Echo) -> None:
        await signing_key(client, HMAC_KEY)
        response = await run_action(client, [sign("HS256"), send(echo)])
        assert response.status_code == 200, response.text
        assert verify(sent_token(echo), HMAC_KEY, "HS256")["aud"] == AUDIENCE

    async def test_iat_exp_and_jti_are_filled_in(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        await signing_key(client, rsa_key().private_pem)
        before = int(time.time())
        action = [sign(expires_in_seconds=120), send(echo), sign(), send(echo)]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        first, second = (r.form()["assertion"][0] for r in echo.state.to("/token"))
        claims = verify(first, rsa_key().public_pem, "RS256")
        assert before <= claims["iat"] <= int(time.time())
        assert claims["exp"] == claims["iat"] + 120
        assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
        # Every token gets its own jti, so a server can refuse a replay.
        assert verify(second, rsa_key().public_pem, "RS256")["jti"] != claims["jti"]

    async def test_claims_given_by_the_action_win(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        await signing_key(client, rsa_key().private_pem)
        claims = {"aud": AUDIENCE, "iat": 1000, "exp": 4102444800, "jti": "fixed-id"}
        response = await run_action(client, [sign(claims=claims), send(echo)])
        assert response.status_code == 200, response.text
        token = sent_token(echo)
        decoded = jwt.get_unverified_claims(token)
        assert decoded == claims

    async def test_header_carries_kid_from_a_binding(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        await signing_key(client, rsa_key().private_pem)
        action = [
            {"type": "update_object", "values": {"key_id": "key-2024-05", "none": None}},
            sign(header={"kid": "{{ vars.key_id }}", "x5t": "{{ vars.none }}"}),
            send(echo),
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        header = jwt.get_unverified_header(sent_token(echo))
        # A header value that renders to null is left out.
        assert header == {"alg": "RS256", "typ": "JWT", "kid": "key-2024-05"}

    async def test_claims_take_bindings(self, client: httpx.AsyncClient, echo: Echo) -> None:
        await signing_key(client, rsa_key().private_pem)
        await create_secret(client, "CLIENT_ID", "client-42", environment_specific=False)
        claims = {
            "iss": "{{ secrets.CLIENT_ID }}",
            "sub": "{{ secrets.CLIENT_ID }}",
            "aud": AUDIENCE,
            "scope": "read {{ vars.extra }}",
            "roles": "{{ vars.roles }}",
            "act": "{{ vars.nobody }}",
        }
        action = [
            {"type": "update_object", "values": {"extra": "write", "roles": ["a", "b"]}},
            {"type": "update_object", "values": {"nobody": None}},
            sign(claims=claims),
            send(echo),
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        decoded = verify(sent_token(echo), rsa_key().public_pem, "RS256")
        assert decoded["iss"] == decoded["sub"] == "client-42"
        assert decoded["scope"] == "read write"
        assert decoded["roles"] == ["a", "b"]
        # A claim whose binding rendered to null is left out, not sent as null.
        assert "act" not in decoded

    @pytest.mark.parametrize("stored_as", ["object", "text"])
    async def test_key_field_of_a_json_secret(
        self, client: httpx.AsyncClient, echo: Echo, stored_as: str
    ) -> None:
        key_file = service_account_key("robot@example.iam.gserviceaccount.com", AUDIENCE)
        value = key_file if stored_as == "object" else json.dumps(key_file)
        await signing_key(client, value, name="SA_KEY")
        node = sign(
            key_secret="SA_KEY",
            key_field="private_key",
            header={"kid": "{{ secrets.SA_KEY.private_key_id }}"},
            claims={"iss": "{{ secrets.SA_KEY.client_email }}", "aud": AUDIENCE},
        )
        response = await run_action(client, [node, send(echo)])
        assert response.status_code == 200, response.text
        token = sent_token(echo)
        decoded = verify(token, rsa_key("service-account").public_pem, "RS256")
        assert decoded["iss"] == "robot@example.iam.gserviceaccount.com"
        assert jwt.get_unverified_header(token)["kid"] == "sa-key-1"

    async def test_pem_with_escaped_newlines_is_accepted(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        await signing_key(client, rsa_key().private_pem.replace("\n", "\\n"))
        response = await run_action(client, [sign(), send(echo)])
        assert response.status_code == 200, response.text
        assert verify(sent_token(echo), rsa_key().public_pem, "RS256")


class TestSecrecy:
    async def test_the_token_is_never_in_the_trace_or_the_response(
        self, app: FastAPI, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        # Refused when saved now (the token is made from the key); one saved before shows none.
        await signing_key(client, rsa_key().private_pem)
        action = [
            sign(claims={"aud": AUDIENCE, "scope": "read"}),
            send(echo),
            {"type": "log", "message": "signed {{ vars.jwt }}"},
            {"type": "end_execution", "response": {"token": "{{ vars.jwt }}"}},
        ]
        response = await run_unchecked(app, client, action)
        assert response.status_code == 200, response.text
        token = sent_token(echo)
        assert response.json()["response"] == {"token": "[REDACTED]"}
        trace = await run_trace(client, response.json()["run_id"])
        recorded = json.dumps(trace)
        assert token not in recorded
        assert_no_key_material(recorded, rsa_key())
        entry = trace[0]
        assert entry["type"] == "sign_jwt"
        assert entry["algorithm"] == "RS256"
        assert entry["into"] == "jwt"
        # Claim names only, never their values.
        assert entry["claims"] == ["aud", "exp", "iat", "jti", "scope"]
        assert "read" not in json.dumps(entry)
        assert trace[2]["message"] == "signed [REDACTED]"


BAD_KEYS = [
    pytest.param(
        "RS256", "not a key at all, just some text", "is not a PEM private key", id="text"
    ),
    pytest.param(
        "RS256",
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        "can't be read as a PEM private key",
        id="broken-pem",
    ),
    pytest.param("RS256", lambda: ec_key().private_pem, "RS256 needs an RSA key", id="ec-for-rs"),
    pytest.param(
        "ES256", lambda: rsa_key().private_pem, "ES256 needs an EC key on P-256", id="rsa-for-es"
    ),
    pytest.param(
        "ES256",
        lambda: ec_key("p384", "P-384").private_pem,
        "ES256 needs an EC key on P-256",
        id="p384-for-es",
    ),
    pytest.param(
        "RS256", lambda: ed25519_key().private_pem, "RS256 needs an RSA key", id="ed25519"
    ),
    pytest.param("RS256", lambda: rsa_key("small", 1024).private_pem, "2048", id="rsa-1024"),
    pytest.param("RS256", encrypted_rsa_pem, "encrypted private key", id="encrypted"),
    pytest.param(
        "RS256",
        lambda: rsa_key().public_pem,
        "can't be read as a PEM private key",
        id="public-key",
    ),
    pytest.param("HS256", lambda: rsa_key().private_pem, "holds a PEM key", id="pem-for-hs"),
    pytest.param("HS256", "short-secret", "shorter than 32 bytes", id="short-hmac"),
    pytest.param("RS256", {"private_key": "x"}, "name the field", id="object-no-field"),
    pytest.param("RS256", 12345678, "must hold the key as text", id="number"),
]


class TestUnusableKeys:
    @pytest.mark.parametrize(("algorithm", "value", "problem"), BAD_KEYS)
    async def test_an_unusable_key_fails_the_run_without_quoting_it(
        self, client: httpx.AsyncClient, echo: Echo, algorithm: str, value: Any, problem: str
    ) -> None:
        stored = value() if callable(value) else value
        await signing_key(client, stored)
        response = await run_action(client, [sign(algorithm), send(echo)])
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["type"] == "binding_error"
        assert problem in error["message"]
        assert "'SIGNING_KEY'" in error["message"]
        assert echo.state.requests == []
        trace = await run_trace(client, response.json()["run_id"])
        for text in (response.text, json.dumps(trace)):
            if isinstance(stored, str):
                assert stored not in text
                for line in stored.splitlines()[1:-1]:
                    assert line not in text

    async def test_missing_key_field(self, client: httpx.AsyncClient, echo: Echo) -> None:
        await signing_key(client, {"private_key_pem": rsa_key().private_pem}, name="SA_KEY")
        node = sign(key_secret="SA_KEY", key_field="private_key")
        response = await run_action(client, [node, send(echo)])
        assert response.status_code == 422, response.text
        message = response.json()["error"]["message"]
        assert "field 'private_key' of secret 'SA_KEY' is missing" in message
        assert_no_key_material(response.text, rsa_key())

    async def test_key_field_of_a_plain_pem_secret(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        await signing_key(client, rsa_key().private_pem)
        response = await run_action(client, [sign(key_field="private_key"), send(echo)])
        assert response.status_code == 422, response.text
        assert "is missing" in response.json()["error"]["message"]
        assert_no_key_material(response.text, rsa_key())

    async def test_a_key_secret_without_a_value(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        await create_secret(client, "SIGNING_KEY")
        response = await run_action(client, [sign(), send(echo)])
        assert response.status_code == 422, response.text
        assert response.json()["error"]["message"] == (
            "sign_jwt: secret 'SIGNING_KEY' has no value"
        )

    async def test_a_binding_error_can_be_caught(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        await signing_key(client, "not a key")
        action = [
            {
                "type": "try",
                "do": [sign(), send(echo)],
                "catch": [{"type": "end_execution", "response": "{{ error.kind }}"}],
                "errors": ["binding"],
            }
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        assert response.json()["response"] == "binding"


class TestValidationOnSave:
    async def save(self, client: httpx.AsyncClient, node: dict[str, Any]) -> httpx.Response:
        endpoint = {"readable_id": "run", "name": "Under test", "action": [node]}
        return await client.post(
            "/v1/services", json={"slug": "svc", "name": "Test", "endpoints": [endpoint]}
        )

    async def test_unknown_key_secret_is_refused_pointing_at_the_node(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await self.save(client, sign(key_secret="NO_SUCH_KEY"))
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_action"
        assert error["path"] == "endpoints[0].action[0].key_secret"
        assert "unknown secret 'NO_SUCH_KEY'" in error["message"]

    async def test_unknown_secret_in_a_claim_binding_is_refused(
        self, client: httpx.AsyncClient
    ) -> None:
        await signing_key(client, rsa_key().private_pem)
        response = await self.save(client, sign(claims={"iss": "{{ secrets.NOPE }}"}))
        assert response.status_code == 422, response.text
        assert response.json()["error"]["path"] == "endpoints[0].action[0].claims.iss"

    @pytest.mark.parametrize(
        ("fields", "path"),
        [
            ({"algorithm": "RS512"}, "endpoints[0].action[0].algorithm"),
            ({"expires_in_seconds": 0}, "endpoints[0].action[0].expires_in_seconds"),
            ({"expires_in_seconds": 86401}, "endpoints[0].action[0].expires_in_seconds"),
            ({"into": "not a name"}, "endpoints[0].action[0].into"),
            ({"key_field": "a.b"}, "endpoints[0].action[0].key_field"),
            ({"header": {"alg": "none"}}, "endpoints[0].action[0]"),
            ({"unknown": 1}, "endpoints[0].action[0].unknown"),
        ],
    )
    async def test_bad_fields_are_refused(
        self, client: httpx.AsyncClient, fields: dict[str, Any], path: str
    ) -> None:
        await signing_key(client, rsa_key().private_pem)
        response = await self.save(client, sign(**fields))
        assert response.status_code == 422, response.text
        assert response.json()["error"]["errors"][0]["path"] == path

    async def test_the_variable_it_signs_into_counts_as_set(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        await signing_key(client, rsa_key().private_pem)
        # `vars.jwt` is declared nowhere else: the sign_jwt node sets it.
        await create_service(client, [sign(), send(echo)])
        response = await client.get("/v1/services/svc")
        node = response.json()["endpoints"][0]["action"][0]
        assert node == sign()
