"""Events announced with a transaction (app/events.py `emit_after_commit`): only once it commits."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import FastAPI
from sqlalchemy import text

from app.events import Event, SecretStatusChanged, emit_after_commit


def change(name: str) -> SecretStatusChanged:
    return SecretStatusChanged(name, "failing", "ok", 0, None, None, datetime.now(UTC))


async def test_emitted_on_commit_and_dropped_on_rollback(app: FastAPI) -> None:
    heard: list[Event] = []
    app.state.events.subscribe(heard.append)
    factory = app.state.session_factory

    async with factory() as session:
        emit_after_commit(session, change("KEPT"))
        await session.execute(text("SELECT 1"))
        assert heard == []  # not before the commit
        await session.commit()
    assert [e.secret for e in heard if isinstance(e, SecretStatusChanged)] == ["KEPT"]

    async with factory() as session:
        emit_after_commit(session, change("UNDONE"))
        await session.execute(text("SELECT 1"))
        await session.rollback()
        await session.commit()  # a later commit of the same session doesn't bring it back
    assert [e.secret for e in heard if isinstance(e, SecretStatusChanged)] == ["KEPT"]
