"""The rules for user accounts (identity grows here)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.auth.models import User
from app.auth.passwords import MIN_PASSWORD_LENGTH, hash_password
from app.errors import InvalidInput


async def ensure_owner(session: AsyncSession, email: str, password: str) -> tuple[User, bool]:
    """The owner account for `email`, created if missing (an existing one is left unchanged)."""
    email = email.strip().lower()
    if "@" not in email or email.startswith("@") or email.endswith("@"):
        raise InvalidInput(f"{email!r} is not an email address")
    existing = (
        await session.execute(select(User).where(col(User.email) == email))
    ).scalar_one_or_none()
    if existing is not None:
        return existing, False
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"the owner's password needs at least {MIN_PASSWORD_LENGTH} characters")
    user = User(email=email, password_hash=hash_password(password), is_owner=True)
    session.add(user)
    await session.flush()
    return user, True
