"""The permissions: their names, their grammar (docs/permissions.md), and what covers what.

The one module that knows them. Code names a permission through it, never by a string literal:
a plain permission is a `Permission` member (`Permission.RUNS_READ`), a scoped one is built by
a function of what it names (`secret_read(name)`, `service_run(slug, readable_id)`,
`act_as(account)`), and `require()` refuses any other name when a router is imported.

Roles hold strings, which `problem` checks against the same names: `*`, a plain permission, or
a scoped one whose name follows the naming rule of what it names. A trailing `*` makes any of
them a prefix: `secrets.*`, `services.run:*`, `secrets.read:OAUTH_*`.
"""

from __future__ import annotations

import difflib
import re
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, NamedTuple

from app.errors import InvalidInput, PermissionDenied

if TYPE_CHECKING:
    from app.auth.actor import Actor

EVERYTHING = "*"


class Permission(StrEnum):
    """The plain permissions: each allows what its name says."""

    SECRETS_MANAGE = "secrets.manage"
    SERVICES_MANAGE = "services.manage"
    SCHEDULES_MANAGE = "schedules.manage"
    RUNS_READ = "runs.read"
    ACCOUNTS_MANAGE = "accounts.manage"
    WEBHOOKS_MANAGE = "webhooks.manage"
    METRICS_READ = "metrics.read"
    SETTINGS_MANAGE = "settings.manage"
    PROVIDERS_MANAGE = "providers.manage"


_PLAIN = tuple(p.value for p in Permission)


class Scoped(StrEnum):
    """The scopes of permissions that name a secret, a service or an account (`SCOPE:NAME`)."""

    SECRETS_READ = "secrets.read"
    SECRETS_UPDATE_FROM_SERVICE = "secrets.update_from_service"
    SECRETS_USE = "secrets.use"
    SECRETS_CONNECT = "secrets.connect"
    SERVICES_RUN = "services.run"
    ACT_AS = "act_as"

    @property
    def prefix(self) -> str:
        """What every permission of this scope starts with (`services.run:`)."""
        return f"{self.value}:"


# The constructors below concatenate (they run on every value read and every run).
_SECRETS_READ = Scoped.SECRETS_READ.prefix
_SECRETS_UPDATE_FROM_SERVICE = Scoped.SECRETS_UPDATE_FROM_SERVICE.prefix
_SECRETS_USE = Scoped.SECRETS_USE.prefix
_SECRETS_CONNECT = Scoped.SECRETS_CONNECT.prefix
_SERVICES_RUN = Scoped.SERVICES_RUN.prefix
_ACT_AS = Scoped.ACT_AS.prefix


def secret_read(name: str) -> str:
    """Read the value of secret `name`."""
    return _SECRETS_READ + name


def secret_update_from_service(name: str) -> str:
    """A run acting for its holder may write secret `name` with `update_secret`."""
    return _SECRETS_UPDATE_FROM_SERVICE + name


def secret_use(name: str) -> str:
    """Save or change an action (or preset) that references secret `name`."""
    return _SECRETS_USE + name


def secret_connect(name: str) -> str:
    """Start the connect flow of secret `name`."""
    return _SECRETS_CONNECT + name


def service_run(slug: str, readable_id: str | None = None) -> str:
    """Run every endpoint of service `slug`, or only its endpoint `readable_id`."""
    if readable_id is None:
        return _SERVICES_RUN + slug
    return f"{_SERVICES_RUN}{slug}/{readable_id}"


def service_run_wanted(slug: str, readable_id: str) -> str:
    """What running endpoint SLUG/ID needs, as refusals word it (either permission will do)."""
    return f"{service_run(slug)!r} or {service_run(slug, readable_id)!r}"


def act_as(account: str) -> str:
    """Make a schedule or a secret's refreshes run as service account `account`."""
    return _ACT_AS + account


def permission_matches(granted: str, wanted: str) -> bool:
    """Whether a granted permission covers a wanted one (a trailing `*` matches any suffix)."""
    if granted == EVERYTHING or granted == wanted:
        return True
    return granted.endswith("*") and wanted.startswith(granted[:-1])


class UnknownPermission(ValueError):
    """The code names a permission that does not exist: a typo, found when a router is imported."""


def plain_permission(permission: str) -> Permission:
    """The plain permission named `permission`; UnknownPermission naming it and the known ones."""
    try:
        return Permission(permission)
    except ValueError:
        guess = difflib.get_close_matches(permission, _PLAIN, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        raise UnknownPermission(
            f"{permission!r} is not a permission{hint}; known: {', '.join(_PLAIN)}"
        ) from None


class _NameRule(NamedTuple):
    """What a scoped permission names: a placeholder, a full name, a prefix a `*` may follow."""

    placeholder: str
    names: str
    full: re.Pattern[str]
    prefix: re.Pattern[str]


def _bare(pattern: str) -> str:
    return pattern.removeprefix("^").removesuffix("$")


@cache
def _name_rules() -> dict[Scoped, _NameRule]:
    """The naming rule of each scope, from the schemas of what it names."""
    # Imported here: the command line imports this module (through Actor) and needs no schemas.
    from app.auth.schemas import ACCOUNT_NAME_PATTERN
    from app.pipeline.schemas import SECRET_NAME_PATTERN
    from app.services.schemas import READABLE_ID_PATTERN, SLUG_PATTERN

    slug, readable_id = _bare(SLUG_PATTERN), _bare(READABLE_ID_PATTERN)
    secret = _NameRule(
        "NAME",
        "a secret name (e.g. ACCESS_TOKEN)",
        re.compile(_bare(SECRET_NAME_PATTERN)),
        re.compile(r"(?:[A-Za-z][A-Za-z0-9_-]*)?"),
    )
    return {
        Scoped.SECRETS_READ: secret,
        Scoped.SECRETS_UPDATE_FROM_SERVICE: secret,
        Scoped.SECRETS_USE: secret,
        Scoped.SECRETS_CONNECT: secret,
        Scoped.SERVICES_RUN: _NameRule(
            "SLUG[/ID]",
            "a service SLUG or SLUG/READABLE_ID (e.g. oauth or oauth/refresh-token)",
            re.compile(f"{slug}(?:/{readable_id})?"),
            re.compile(r"(?:[a-z0-9][a-z0-9-]*(?:/[A-Za-z0-9_-]*)?)?"),
        ),
        Scoped.ACT_AS: _NameRule(
            "ACCOUNT",
            "a service account name (e.g. ci-deployer)",
            re.compile(_bare(ACCOUNT_NAME_PATTERN)),
            re.compile(r"(?:[a-z0-9][a-z0-9_-]*)?"),
        ),
    }


@cache
def _grammar() -> str:
    """Every known permission, for the message that refuses an unknown one."""
    scoped = (f"{scope.value}:{rule.placeholder}" for scope, rule in _name_rules().items())
    known = ", ".join([EVERYTHING, *_PLAIN, *scoped])
    return f"known: {known}; a trailing * matches any suffix, e.g. services.run:*"


def problem(permission: str) -> str | None:
    """What is wrong with a permission string, or None when it follows the grammar."""
    if permission == EVERYTHING or permission in _PLAIN:
        return None
    scope, colon, name = permission.partition(":")
    rules = _name_rules()
    if colon and scope in rules:
        rule = rules[Scoped(scope)]
        if name.endswith("*") and rule.prefix.fullmatch(name[:-1]):
            return None
        if rule.full.fullmatch(name):
            return None
        return (
            f"{permission!r} is not a permission: {scope}:{rule.placeholder} takes {rule.names}, "
            "optionally ending in *"
        )
    if colon and scope in _PLAIN:
        return f"{permission!r} is not a permission: {scope} takes no ':NAME'"
    if not colon and permission.endswith("*"):
        # `secrets.*` or `services.r*`: a prefix of some real permission.
        head = permission[:-1]
        if any(p.startswith(head) for p in (*_PLAIN, *(s.prefix for s in Scoped))):
            return None
    guess = difflib.get_close_matches(scope, [*_PLAIN, *(s.value for s in Scoped)], n=1)
    hint = f" (did you mean {guess[0] + colon + name!r}?)" if guess else ""
    return f"{permission!r} is not a permission{hint}; {_grammar()}"


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
