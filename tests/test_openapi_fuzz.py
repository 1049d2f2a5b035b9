"""Schemathesis over `/openapi.json` on a seeded database: no 5xx, every error documented.

The app runs under a real uvicorn on loopback (with its lifespan), seeded through its own API with
the canonical refresh bound to the loopback token server, so generated requests reach real rows
(`GET /refresh/ACCESS_TOKEN` really rotates tokens). Every operation is fuzzed in both generation
modes; one with path parameters is fuzzed a little with generated names (mostly unknown ones) and
fully with its path parameters pinned to the seeded rows, deleting operations last. Generation is
derandomized and bounded, so a run is deterministic; it runs on SQLite and on PostgreSQL, where
most of what only a real server refuses (NUL characters, integer ranges) shows up.

Schemathesis' own stateful run then chains operations by the links it infers (create a schedule,
then read, change and delete it), so changes reach rows the seed doesn't have; it took over part
of the per-operation examples' time (10 -> 6 each). A last test holds the schema to its nulls: a
PATCH field declared nullable takes null, one that isn't answers 422.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.config import Settings
from app.demo.loopback import LoopbackServer
from app.main import create_app
from tests.conftest import OWNER_EMAIL, TokenServer, create_secret, owner_token, setup_oauth

MAX_EXAMPLES = int(os.environ.get("TOKENFARM_FUZZ_EXAMPLES", "6"))
# Generated path names nearly all miss (404/422 before any work), so they get a smaller share.
UNPINNED_EXAMPLES = 4
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
STATEFUL_EXAMPLES = int(os.environ.get("TOKENFARM_FUZZ_STATEFUL_EXAMPLES", "20"))
# A schema can't say that a cron has five fields, a permission exists, a referenced account
# exists or an expiry lies ahead: such schema-valid requests are rightly refused with 422.
# `ensure_resource_availability` reads a 404 after a create as "the resource vanished"; tokenfarm
# answers 404 also for a missing role *named in the body* of a change to the account just made
# (tests/auth/test_accounts_api.py: an unknown role is a 404 naming it), which it can't tell apart.
STATEFUL_EXCLUDED_CHECKS = "positive_data_acceptance,ensure_resource_availability"


@dataclass
class Seeded:
    """The running app, the rows its database was seeded with, and its backend."""

    url: str
    pins: dict[str, str]


async def seed(
    settings: Settings, token_server: TokenServer, owner_password_hash: str
) -> dict[str, str]:
    """Secrets, the canonical refresh bound to ACCESS_TOKEN, and one logged run.

    Seeded in-process: over HTTP the request session currently commits after the answer is sent
    (reported), so a create could still be invisible to the request right after it.
    """
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        token = await owner_token(app, owner_password_hash)
        client = httpx.AsyncClient(
            transport=transport,
            base_url="http://seed.test",
            headers={"Authorization": f"Bearer {token}"},
        )
        await setup_oauth(client, token_server)
        await create_secret(client, "PLAIN", "plain-value", description="not refreshable")
        response = await client.get("/refresh/ACCESS_TOKEN")
        assert response.status_code == 200, response.text
        run_id = response.json()["run_id"]
        response = await client.post(
            "/v1/users", json={"email": "fuzz@example.com", "password": "fuzz-password-123"}
        )
        assert response.status_code == 201, response.text
        await client.aclose()
    return {
        "token": token,
        "name": "ACCESS_TOKEN",
        "secret": "ACCESS_TOKEN",
        "slug": "oauth",
        "readable_id": "refresh-token",
        "run_id": run_id,
        # Not the owner: a fuzzed password change would end the token every call uses.
        "email": "fuzz@example.com",
        "key_name": "ci",
        # Device flows live in the memory of the server that started one: none is running.
        "flow_id": "no-such-flow",
    }


@pytest.fixture
def seeded(
    settings: Settings, token_server: TokenServer, owner_password_hash: str
) -> Iterator[Seeded]:
    """The app under uvicorn on loopback, seeded (logging at INFO: DEBUG triples the time)."""
    quiet = settings.model_copy(update={"log_level": "INFO"})
    pins = asyncio.run(seed(quiet, token_server, owner_password_hash))
    with LoopbackServer(create_app(quiet)) as server:
        yield Seeded(server.url, pins)


# The OAuth token endpoint answers RFC 6749 §5.2 errors (app/auth/oauth.py), not our shape.
OAUTH_ROUTES = {"/auth/token"}


def error_shape(response: Any) -> str | None:
    """Why an error response is not `{"error": {"type", "message", ...}}` (at the token endpoint:
    `{"error", "error_description"}`), or None if it is."""
    try:
        body = response.json()
    except ValueError:
        return "the body is not JSON"
    if urlsplit(response.request.url).path in OAUTH_ROUTES and response.status_code < 500:
        if not isinstance(body, dict) or not all(
            isinstance(body.get(key), str) for key in ("error", "error_description")
        ):
            return "a token endpoint error without string `error` and `error_description`"
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "no `error` object"
    if not isinstance(error.get("type"), str) or not isinstance(error.get("message"), str):
        return "`error` lacks a string `type` or `message`"
    if response.status_code == 422:
        problems = error.get("errors")
        if not isinstance(problems, list) or not all(
            isinstance(p, dict) and {"path", "message"} <= set(p) for p in problems
        ):
            return "a 422 without `errors: [{path, message}]`"
    return None


def fuzz(strategy: Any, examples: int, seeded: Seeded, seen: Counter[str]) -> str | None:
    """Run one strategy's cases; the failure report, or None when every case passed."""

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Case) -> None:
        response = case.call(
            base_url=seeded.url,
            timeout=30,
            headers={"Authorization": f"Bearer {seeded.pins['token']}"},
        )
        seen[f"{case.operation.label} {response.status_code}"] += 1
        case.validate_response(response, checks=CHECKS)
        # A browser's page (the connect flow's) is HTML where the operation documents it (the
        # content-type check above holds it to that); every other error is the JSON shape.
        content_type = response.headers.get("content-type") or [""]  # a list per header
        html = str(content_type[0]).startswith("text/html")
        if response.status_code >= 400 and not html:
            problem = error_shape(response)
            assert problem is None, f"{response.status_code}: {problem}: {response.text[:300]}"

    try:
        check()
    except Unsatisfiable:
        return None  # negative mode for an operation without input: nothing can be wrong
    except (AssertionError, FailureGroup) as exc:
        return str(exc)
    return None


# Logging out everywhere ends the token every call uses: fuzzed once, after everything else.
ENDS_THE_TOKEN = ("POST", "/auth/logout-all")


def ends_the_token(operation: APIOperation) -> bool:
    """Whether fuzzing the operation would end the token of every later call."""
    return (operation.method.upper(), operation.path) == ENDS_THE_TOKEN


def deleting_last(operation: APIOperation) -> tuple[bool, bool, str]:
    """Sort key: pinned deletes would take the seeded rows from every later operation, and
    logging out everywhere the token."""
    ends = ends_the_token(operation)
    return operation.method.upper() == "DELETE" or ends, ends, operation.label


def test_no_operation_answers_5xx_or_an_undocumented_error(seeded: Seeded) -> None:
    schema = schemathesis.openapi.from_url(f"{seeded.url}/openapi.json")
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=deleting_last)
    seen: Counter[str] = Counter()
    failures = []
    for pinned in (False, True):
        for operation in operations:
            names = [parameter.name for parameter in operation.path_parameters]
            if ends_the_token(operation):
                if not pinned:  # in the pinned pass instead, where it comes last of all
                    continue
            elif pinned and not names:
                continue
            examples = UNPINNED_EXAMPLES if names and not pinned else MAX_EXAMPLES
            path_parameters = {name: seeded.pins[name] for name in names} if pinned else None
            for mode in MODES:
                strategy = operation.as_strategy(
                    generation_mode=mode, path_parameters=path_parameters
                )
                failure = fuzz(strategy, examples, seeded, seen)
                if failure:
                    failures.append(f"{operation.label} ({mode.value}, pinned={pinned}): {failure}")
    print("\n".join(f"{count:4} {label}" for label, count in sorted(seen.items())))
    assert len(operations) >= 20
    assert not failures, "\n\n".join(failures)


def test_stateful_sequences_keep_to_the_schema(seeded: Seeded, tmp_path: Path) -> None:
    """Schemathesis' own stateful run: sequences chained by the links it infers (create, then
    read, change, delete what was made), every check but `positive_data_acceptance`."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{seeded.url}/openapi.json",
        "--phases=stateful",
        f"--header=Authorization: Bearer {seeded.pins['token']}",
        f"--max-examples={STATEFUL_EXAMPLES}",
        "--seed=1",
        "--workers=1",
        "--checks=all",
        f"--exclude-checks={STATEFUL_EXCLUDED_CHECKS}",
        "--continue-on-failure",
        "--no-color",
    ]
    # In tmp_path: schemathesis keeps its replay store in `.schemathesis/` of the directory.
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    report = result.stdout[-20_000:] + result.stderr[-2_000:]
    assert "Stateful" in result.stdout and "API Links:" in result.stdout, report
    assert result.returncode == 0, report


def allows_null(schema: dict[str, Any]) -> bool:
    """Whether a property's JSON schema lets null through."""
    if schema.get("type") == "null" or "null" in (schema.get("type") or []):
        return True
    return any(allows_null(branch) for branch in schema.get("anyOf", []) + schema.get("oneOf", []))


async def test_the_schema_offers_null_only_where_the_api_takes_it(
    app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
) -> None:
    # A stateful schemathesis run found 13 valid requests refused: update fields typed
    # `X | None` whose store refuses null. Every PATCH field, both ways, on a real row.
    await setup_oauth(client, token_server)
    for path, body in [
        ("/v1/roles", {"name": "bot-role", "permissions": ["services.run:*"]}),
        ("/v1/service-accounts", {"name": "bot", "roles": ["bot-role"]}),
        (
            "/v1/schedules",
            {"name": "tick", "service": "oauth", "endpoint": "refresh-token", "cron": "0 * * * *"}
            | {"timezone": "UTC", "run_as": "bot"},
        ),
        ("/v1/webhooks", {"name": "hook", "url": "https://hooks.example.com/tokenfarm"}),
    ]:
        response = await client.post(path, json=body)
        assert response.status_code == 201, response.text
    rows = {
        "/v1/secrets/{name}": "/v1/secrets/ACCESS_TOKEN",
        "/v1/schedules/{name}": "/v1/schedules/tick",
        "/v1/webhooks/{name}": "/v1/webhooks/hook",
        "/v1/roles/{name}": "/v1/roles/bot-role",
        "/v1/users/{email}": f"/v1/users/{OWNER_EMAIL}",
        "/v1/service-accounts/{name}": "/v1/service-accounts/bot",
    }
    schema = app.openapi()
    components = schema["components"]["schemas"]
    patched = set()
    for path, operations in schema["paths"].items():
        if "patch" not in operations:
            continue
        patched.add(path)
        reference = operations["patch"]["requestBody"]["content"]["application/json"]["schema"]
        model = components[reference["$ref"].rsplit("/", 1)[1]]
        for field, declared in model["properties"].items():
            response = await client.patch(rows[path], json={field: None})
            if allows_null(declared):
                assert response.status_code == 200, f"{path} {field}: {response.text}"
            else:
                assert response.status_code == 422, f"{path} {field}: {response.text}"
                assert field in response.json()["error"]["message"], response.text
    assert patched == set(rows)
