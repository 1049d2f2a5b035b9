"""Console sessions: the cookie, the server-side row behind it, and the page dependency.

A session id is 32 random bytes in an HttpOnly, SameSite=Lax cookie (Secure when the public
URL is https); the table keeps only its SHA-256, so the database can't be replayed as cookies.
A session ends when it is idle for `console_session_idle_seconds`, when it is older than
`console_session_max_seconds`, on logout, and when the user's token generation moves on (a
password change, "log out everywhere": the same check login tokens get, in
`AccountStore.actor_for_token`). The cookie is read only by console pages: the API's
credentials are the `Authorization` header alone (app/auth/dependencies.py), so a session never
authorizes an API call, and an API key never opens the console.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request, Response
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.auth.accounts import AccountStore
from app.auth.actor import Actor
from app.auth.models import User
from app.auth.tokens import TokenClaims
from app.config import Settings
from app.console.models import ConsoleSession
from app.dependencies import SessionDep
from app.errors import NotAuthenticated

COOKIE_NAME = "tokenfarm_session"
LOGIN_PATH = "/console/login"
# last_seen_at is written at most this often: not every page view needs a write.
TOUCH_EVERY = timedelta(seconds=60)


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def csrf_token_of(raw: str) -> str:
    """The session's synchronizer token: derived from the session id (one-way, under a label of
    its own, so neither it nor the stored hash tells the id), the same for the session's life."""
    return hashlib.sha256(b"tokenfarm-console-csrf\0" + raw.encode()).hexdigest()


class LoginRequired(Exception):
    """No live session: the page answers a redirect to the login page."""


@dataclass(frozen=True)
class ConsoleUser:
    """The logged-in person of a console request: who they are, what they may do, and their
    session's CSRF token (for every state-changing form)."""

    actor: Actor
    email: str
    session_id: int
    csrf_token: str
    # The outcome of the last form post, shown once.
    flash: str | None

    def __repr__(self) -> str:
        return f"ConsoleUser({self.email!r}, session {self.session_id})"


class SessionStore:
    """Console sessions, for one database session; times come from the app's clock."""

    def __init__(self, session: AsyncSession, settings: Settings, now: datetime) -> None:
        self.session = session
        self.settings = settings
        self.now = now

    async def start(self, user: User) -> str:
        """A new session for a user who just logged in; answers the cookie's value."""
        assert user.id is not None
        raw = secrets.token_urlsafe(32)
        self.session.add(
            ConsoleSession(
                id_hash=_hash(raw),
                user_id=user.id,
                token_generation=user.token_generation,
                created_at=self.now,
                last_seen_at=self.now,
            )
        )
        await self.session.flush()
        return raw

    def _expired(self, row: ConsoleSession) -> bool:
        idle = timedelta(seconds=self.settings.console_session_idle_seconds)
        lifetime = timedelta(seconds=self.settings.console_session_max_seconds)
        return self.now - row.last_seen_at >= idle or self.now - row.created_at >= lifetime

    async def resume(self, raw: str) -> ConsoleUser | None:
        """The user of a live session (its flash taken), or None: no such session, it timed
        out, or its user was disabled, deleted or logged out everywhere (then it is deleted)."""
        if not raw or len(raw) > 100:
            return None
        query = (
            select(ConsoleSession, User)
            .join(User, col(User.id) == col(ConsoleSession.user_id))
            .where(col(ConsoleSession.id_hash) == _hash(raw))
        )
        found = (await self.session.execute(query)).one_or_none()
        if found is None:
            return None
        row, user = found
        if self._expired(row):
            await self.session.delete(row)
            return None
        claims = TokenClaims(
            subject=user.email, issued_at=0, expires_at=0, generation=row.token_generation
        )
        try:
            actor = await AccountStore(self.session).actor_for_token(claims)
        except NotAuthenticated:
            await self.session.delete(row)
            return None
        flash = row.flash
        if flash is not None or self.now - row.last_seen_at >= TOUCH_EVERY:
            row.flash = None
            row.last_seen_at = self.now
        assert row.id is not None
        return ConsoleUser(
            actor=actor,
            email=user.email,
            session_id=row.id,
            csrf_token=csrf_token_of(raw),
            flash=flash,
        )

    async def flash(self, session_id: int, message: str) -> None:
        """Keep a message for the next page this session shows."""
        await self.session.execute(
            update(ConsoleSession).where(col(ConsoleSession.id) == session_id).values(flash=message)
        )

    async def end(self, session_id: int) -> None:
        """Log this session out."""
        await self.session.execute(
            delete(ConsoleSession).where(col(ConsoleSession.id) == session_id)
        )


def session_store(request: Request, session: AsyncSession) -> SessionStore:
    """The session store of a request, on the app's settings and clock."""
    state = request.app.state
    return SessionStore(session, state.settings, state.clock.now())


def cookie_is_secure(settings: Settings) -> bool:
    """Secure cookies when the console is reached over https (`TOKENFARM_PUBLIC_URL`)."""
    return settings.public_url_is_https


def set_session_cookie(response: Response, raw: str, settings: Settings) -> None:
    """Hand the browser its session id."""
    response.set_cookie(
        COOKIE_NAME,
        raw,
        max_age=settings.console_session_max_seconds,
        path="/",
        httponly=True,
        samesite="lax",
        secure=cookie_is_secure(settings),
    )


def clear_session_cookie(response: Response, settings: Settings) -> None:
    """Make the browser forget its session id."""
    response.delete_cookie(
        COOKIE_NAME, path="/", httponly=True, samesite="lax", secure=cookie_is_secure(settings)
    )


async def console_user(request: Request, session: SessionDep) -> ConsoleUser:
    """The logged-in user of a console page, or LoginRequired (a redirect to the login page).

    Commits at once: what a page does next (a refresh) must not run inside this read's
    transaction."""
    raw = request.cookies.get(COOKIE_NAME, "")
    user = await session_store(request, session).resume(raw)
    await session.commit()
    if user is None:
        raise LoginRequired
    return user


ConsoleUserDep = Annotated[ConsoleUser, Depends(console_user)]
