"""The actor: who a request or a run acts for, and the permissions it holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.auth.permissions import permission_matches, secret_update_from_service, service_run
from app.errors import NotAuthenticated, PermissionDenied

ActorKind = Literal["user", "service_account", "anonymous", "system"]


@dataclass(frozen=True)
class Actor:
    """A user, a service account, the anonymous caller, or the system itself."""

    kind: ActorKind
    name: str
    permissions: frozenset[str]

    @property
    def label(self) -> str:
        """`user:alice@example.com`: how runs and versions name the actor."""
        return f"{self.kind}:{self.name}"

    def can(self, permission: str) -> bool:
        """Whether any held permission covers `permission`."""
        return any(permission_matches(granted, permission) for granted in self.permissions)

    def may_hold_any(self, prefix: str) -> bool:
        """Whether some permission starting with `prefix` is covered (e.g. any `services.run:`)."""
        return any(
            granted.startswith(prefix) or permission_matches(granted, prefix)
            for granted in self.permissions
        )

    def can_run(self, slug: str, readable_id: str) -> bool:
        """Running an endpoint needs `services.run:SLUG` or `services.run:SLUG/ID` (for a
        caller, and for the `run_as`/`refresh_as` account a run acts as)."""
        return self.can(service_run(slug)) or self.can(service_run(slug, readable_id))

    def can_write_all(self, secrets: set[str]) -> bool:
        """Whether a run acting for it may write every one of `secrets` (the update rule)."""
        return all(self.can(secret_update_from_service(name)) for name in secrets)


def refuse(actor: Actor, permission: str, alternatives: str = "") -> None:
    """401 for the anonymous caller (it should log in), 403 naming the permission otherwise."""
    permission = str(permission)  # a `Permission` member's repr is not its name
    wanted = f"the permission {permission!r}{alternatives}"
    if actor.kind == "anonymous":
        raise NotAuthenticated(
            f"log in (POST /auth/token) or send an API key: this needs {wanted}",
            permission=permission,
        )
    raise PermissionDenied(f"this needs {wanted}", permission=permission)


def ensure(actor: Actor, permission: str) -> None:
    """Refuse unless the actor holds `permission` (for checks that name a secret or service)."""
    if not actor.can(permission):
        refuse(actor, permission)
