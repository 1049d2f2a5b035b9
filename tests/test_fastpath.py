"""The fast-path mechanism (app/fastpath.py): a shortcut is bound to its route's own pattern."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Path

from app.fastpath import FastPath, bind


async def never(*_: Any) -> None:
    """A shortcut that always hands on."""
    return None


def make_app() -> tuple[FastAPI, Any, Any]:
    """An app with a prefixed GET route whose parameter declares a pattern, one whose parameter
    doesn't, and a POST route."""
    router = APIRouter(prefix="/v1/things")

    @router.get("/{name}/value")
    async def read_thing(name: str = Path(pattern=r"^[A-Z]+$")) -> str:
        return name

    @router.get("/{name}/notes")
    async def read_notes(name: str) -> str:
        return name

    @router.post("/{name}")
    async def write_thing(name: str) -> str:
        return name

    app = FastAPI()
    app.include_router(router)
    app.state.read_notes = read_notes
    return app, read_thing, write_thing


class TestBind:
    def test_matches_on_the_routes_own_path_and_the_patterns_the_route_declares(self) -> None:
        app, read_thing, _ = make_app()

        [bound] = bind(app.routes, [FastPath(read_thing, never)])

        assert bound.match("/v1/things/ABC/value") == {"name": "ABC"}
        assert bound.match("/v1/things/abc/value") is None  # outside the route's own pattern
        assert bound.match("/v1/things/ABC") is None
        assert bound.match("/things/ABC/value") is None  # the router's prefix is part of it

    def test_a_parameter_without_a_pattern_matches_any_segment(self) -> None:
        app, _, _ = make_app()

        [bound] = bind(app.routes, [FastPath(app.state.read_notes, never)])

        assert bound.match("/v1/things/any-thing_1/notes") == {"name": "any-thing_1"}
        assert bound.match("/v1/things/a/b/notes") is None  # one path segment, as the route

    def test_a_fast_path_without_a_get_route_is_refused(self) -> None:
        app, _, write_thing = make_app()

        with pytest.raises(LookupError, match="no GET route"):
            bind(app.routes, [FastPath(write_thing, never)])
