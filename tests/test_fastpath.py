"""The fast-path mechanism (app/fastpath.py): a shortcut is bound to its route's own pattern."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, FastAPI

from app.fastpath import FastPath, bind


async def never(*_: Any) -> None:
    """A shortcut that always hands on."""
    return None


def make_app() -> tuple[FastAPI, Any, Any]:
    """An app with a prefixed GET route and a POST route."""
    router = APIRouter(prefix="/v1/things")

    @router.get("/{name}/value")
    async def read_thing(name: str) -> str:
        return name

    @router.post("/{name}")
    async def write_thing(name: str) -> str:
        return name

    app = FastAPI()
    app.include_router(router)
    return app, read_thing, write_thing


class TestBind:
    def test_matches_on_the_routes_own_path_and_the_declared_patterns(self) -> None:
        app, read_thing, _ = make_app()

        [bound] = bind(app.routes, [FastPath(read_thing, never, {"name": r"^[A-Z]+$"})])

        assert bound.match("/v1/things/ABC/value") == {"name": "ABC"}
        assert bound.match("/v1/things/abc/value") is None  # outside the declared pattern
        assert bound.match("/v1/things/ABC") is None
        assert bound.match("/things/ABC/value") is None  # the router's prefix is part of it

    def test_a_fast_path_without_a_get_route_or_with_an_unknown_parameter_is_refused(
        self,
    ) -> None:
        app, read_thing, write_thing = make_app()

        with pytest.raises(LookupError, match="no GET route"):
            bind(app.routes, [FastPath(write_thing, never)])
        with pytest.raises(LookupError, match="no path parameter"):
            bind(app.routes, [FastPath(read_thing, never, {"secret": r"^.*$"})])
