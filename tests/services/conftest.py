"""Fixtures of the services tests: callers holding exactly the permissions a test names."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.auth.conftest import Callers


@pytest.fixture
async def callers(app: FastAPI, client: httpx.AsyncClient) -> AsyncIterator[Callers]:
    """A maker of callers with chosen permissions (as in tests/auth)."""
    maker = Callers(app=app, owner=client)
    yield maker
    for http in maker.opened:
        await http.aclose()
