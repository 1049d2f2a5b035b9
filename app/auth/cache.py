"""A short-lived cache of who a credential is, so a request doesn't look its caller up again.

Resolving an API key or a login token to an actor costs four queries; a hot caller (an app reading
its token every second) would pay them on every request. An entry lives at most
`TOKENFARM_AUTH_CACHE_SECONDS` (default 5; 0 turns the cache off) and never past the credential's
own expiry. Any committed change to users, service accounts, API keys or roles made through this
process empties every cache in it at once, so a revoked key or a removed permission stops working
on the next request here; a change made by another process (another replica, the CLI) takes
effect here within the cache's lifetime.

Entries are keyed by a hash of the credential, never the credential itself. A lookup that raced
with a change (it read the old rows while the change committed) is not stored: each fill
presents the generation it started from, and a change moves the generation on.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import ORMExecuteState, Session

from app.auth.actor import Actor
from app.auth.models import ApiKey, Role, ServiceAccount, ServiceAccountRole, User, UserRole
from app.db import utcnow

AUTH_MODELS = (User, ServiceAccount, ApiKey, Role, UserRole, ServiceAccountRole)
AUTH_TABLES = frozenset(model.__tablename__ for model in AUTH_MODELS)  # type: ignore[attr-defined]
MAX_ENTRIES = 10_000
_CHANGED = "tokenfarm.auth_changed"

_caches: weakref.WeakSet[ActorCache] = weakref.WeakSet()


class ActorCache:
    """Credential → actor for a few seconds; one per app."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.generation = 0
        self._entries: dict[bytes, tuple[Actor, float]] = {}
        _caches.add(self)

    @staticmethod
    def _key(credential: str) -> bytes:
        return hashlib.blake2b(credential.encode(), digest_size=16).digest()

    def get(self, credential: str) -> Actor | None:
        """The cached actor of a credential, unless it has expired."""
        entry = self._entries.get(self._key(credential))
        if entry is None:
            return None
        actor, until = entry
        if self.clock() >= until:
            self._entries.pop(self._key(credential), None)
            return None
        return actor

    def put(
        self,
        credential: str,
        actor: Actor,
        *,
        generation: int,
        credential_expires_at: datetime | None = None,
    ) -> None:
        """Remember an actor looked up since `generation` (dropped if a change came between)."""
        if self.ttl_seconds <= 0 or generation != self.generation:
            return
        lifetime = self.ttl_seconds
        if credential_expires_at is not None:
            lifetime = min(lifetime, (credential_expires_at - utcnow()).total_seconds())
        if lifetime <= 0:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[self._key(credential)] = (actor, self.clock() + lifetime)

    def clear(self) -> None:
        """Forget every entry; lookups in progress won't store what they read."""
        self.generation += 1
        self._entries.clear()


def clear_all() -> None:
    """Empty every actor cache in this process (after a change to accounts or roles)."""
    for cache in list(_caches):
        cache.clear()


def _changes_auth(session: Session) -> bool:
    for obj in (*session.new, *session.deleted):
        if isinstance(obj, AUTH_MODELS):
            return True
    for obj in session.dirty:
        if not isinstance(obj, AUTH_MODELS):
            continue
        changed = {attr.key for attr in inspect(obj).attrs if attr.history.has_changes()}
        # Noting when a key was last used is bookkeeping, not a change of who may do what.
        if changed - {"last_used_at"}:
            return True
    return False


@event.listens_for(Session, "after_flush")
def _note_flushed_change(session: Session, _context: Any) -> None:
    if _changes_auth(session):
        session.info[_CHANGED] = True


@event.listens_for(Session, "do_orm_execute")
def _note_statement_change(state: ORMExecuteState) -> None:
    if not (state.is_insert or state.is_update or state.is_delete):
        return
    table = getattr(state.statement, "table", None)
    if getattr(table, "name", None) in AUTH_TABLES:
        state.session.info[_CHANGED] = True


@event.listens_for(Session, "after_commit")
def _clear_after_commit(session: Session) -> None:
    if session.info.pop(_CHANGED, False):
        clear_all()


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_CHANGED, None)
