"""The permission grammar of DESIGN.md, and the check that refuses granting what one lacks.

A permission is `*`, a plain one (`secrets.manage`), or a scoped one (`secrets.read:NAME`) whose
name follows the naming rule of what it names. A trailing `*` makes any of them a prefix:
`secrets.*`, `services.run:*`, `secrets.read:OAUTH_*`.
"""

from __future__ import annotations

import difflib
import re
from typing import NamedTuple

from app.auth.actor import Actor
from app.auth.schemas import ACCOUNT_NAME_PATTERN
from app.errors import InvalidInput, PermissionDenied
from app.pipeline.schemas import SECRET_NAME_PATTERN
from app.services.schemas import READABLE_ID_PATTERN, SLUG_PATTERN

PLAIN = (
    "secrets.manage",
    "services.manage",
    "schedules.manage",
    "runs.read",
    "accounts.manage",
    "webhooks.manage",
    "metrics.read",
)


def _bare(pattern: str) -> str:
    return pattern.removeprefix("^").removesuffix("$")


class Scope(NamedTuple):
    """What a scoped permission names: a placeholder, a full name, a prefix a `*` may follow."""

    placeholder: str
    names: str
    full: re.Pattern[str]
    prefix: re.Pattern[str]


_SLUG, _READABLE_ID = _bare(SLUG_PATTERN), _bare(READABLE_ID_PATTERN)
_SECRET = re.compile(_bare(SECRET_NAME_PATTERN))
_SECRET_PREFIX = re.compile(r"(?:[A-Za-z][A-Za-z0-9_-]*)?")
SCOPED = {
    "secrets.read": Scope("NAME", "a secret name (e.g. ACCESS_TOKEN)", _SECRET, _SECRET_PREFIX),
    "secrets.update_from_service": Scope(
        "NAME", "a secret name (e.g. ACCESS_TOKEN)", _SECRET, _SECRET_PREFIX
    ),
    "services.run": Scope(
        "SLUG[/ID]",
        "a service SLUG or SLUG/READABLE_ID (e.g. oauth or oauth/refresh-token)",
        re.compile(f"{_SLUG}(?:/{_READABLE_ID})?"),
        re.compile(r"(?:[a-z0-9][a-z0-9-]*(?:/[A-Za-z0-9_-]*)?)?"),
    ),
    "act_as": Scope(
        "ACCOUNT",
        "a service account name (e.g. ci-deployer)",
        re.compile(_bare(ACCOUNT_NAME_PATTERN)),
        re.compile(r"(?:[a-z0-9][a-z0-9_-]*)?"),
    ),
}
KNOWN = ", ".join(["*", *PLAIN, *(f"{name}:{scope.placeholder}" for name, scope in SCOPED.items())])
GRAMMAR = f"known: {KNOWN}; a trailing * matches any suffix, e.g. services.run:*"


def problem(permission: str) -> str | None:
    """What is wrong with a permission string, or None when it follows the grammar."""
    if permission == "*" or permission in PLAIN:
        return None
    scope, colon, name = permission.partition(":")
    if colon and scope in SCOPED:
        rule = SCOPED[scope]
        if name.endswith("*") and rule.prefix.fullmatch(name[:-1]):
            return None
        if rule.full.fullmatch(name):
            return None
        return (
            f"{permission!r} is not a permission: {scope}:{rule.placeholder} takes {rule.names}, "
            "optionally ending in *"
        )
    if colon and scope in PLAIN:
        return f"{permission!r} is not a permission: {scope} takes no ':NAME'"
    if not colon and permission.endswith("*"):
        # `secrets.*` or `services.r*`: a prefix of some real permission.
        head = permission[:-1]
        if any(p.startswith(head) for p in (*PLAIN, *(f"{s}:" for s in SCOPED))):
            return None
    guess = difflib.get_close_matches(scope, [*PLAIN, *SCOPED], n=1)
    hint = f" (did you mean {guess[0] + colon + name!r}?)" if guess else ""
    return f"{permission!r} is not a permission{hint}; {GRAMMAR}"


def is_valid_permission(permission: str) -> bool:
    """Whether a string follows the grammar (a trailing `*` matches any suffix)."""
    return problem(permission) is None


def validate_permissions(permissions: list[str]) -> list[str]:
    """The permissions, de-duplicated in order, or InvalidInput naming the first bad one."""
    for index, permission in enumerate(permissions):
        wrong = problem(permission)
        if wrong is not None:
            raise InvalidInput(f"permissions[{index}]: {wrong}", path=f"permissions[{index}]")
    return list(dict.fromkeys(permissions))


def ensure_may_grant(actor: Actor, permissions: list[str], what: str) -> None:
    """Refuse to grant any permission the granting actor does not hold itself."""
    missing = [p for p in permissions if not actor.can(p)]
    if missing:
        raise PermissionDenied(
            f"{what} would grant {', '.join(missing)}, which you don't hold; "
            "you can only grant permissions you have",
            permission=missing[0],
        )
