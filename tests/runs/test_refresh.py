"""The canonical refresh end to end, through the real HTTP API, against a real token server."""

from __future__ import annotations

import httpx

from tests.conftest import TokenServer, secret_value, setup_oauth


class TestCanonicalRefresh:
    async def test_rotates_both_secrets_five_times_without_invalid_grant(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        setup = await setup_oauth(client, token_server)
        seen_refresh = {setup.refresh_token}
        for round_number in range(1, 6):
            response = await client.get("/refresh/ACCESS_TOKEN")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] == "succeeded"
            assert body["secret"] == "ACCESS_TOKEN"
            assert body["version"] == round_number
            assert body["expires_at"] is not None
            access = await secret_value(client, "ACCESS_TOKEN")
            refresh = await secret_value(client, "REFRESH_TOKEN")
            assert token_server.state.is_active(access)
            assert refresh not in seen_refresh
            seen_refresh.add(refresh)
        assert token_server.state.token_requests == 5
        errors = [r for r in token_server.state.requests if r.get("error")]
        assert errors == []
