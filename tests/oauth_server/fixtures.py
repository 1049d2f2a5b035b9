"""The `oauth_server` fixture: one django-oauth-toolkit process per xdist worker, reset per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.oauth_server import OAuthServer, OAuthServerError


@pytest.fixture(scope="session")
def oauth_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthServer]:
    """The worker's provider (access tokens live 60 s). Outside CI a failure to start skips the
    tests that need it, with the reason; with CI=true it fails them."""
    with ExitStack() as stack:
        try:
            server = stack.enter_context(
                OAuthServer.launch(tmp_path_factory.mktemp("oauth_server"))
            )
        except (OAuthServerError, OSError) as error:
            if os.environ.get("CI") == "true":
                pytest.fail(f"the OAuth test provider did not start: {error}")
            pytest.skip(f"the OAuth test provider did not start: {error}")
        yield server


@pytest.fixture
def oauth_server(oauth_server_process: OAuthServer) -> OAuthServer:
    """The worker's provider with an empty request log and no fault pending."""
    oauth_server_process.reset()
    return oauth_server_process
