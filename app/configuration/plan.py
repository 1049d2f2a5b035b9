"""The plan: the document checked against the database as a whole, and what applying it changes.

Checking comes first and finds every problem at once (each at its file and line): names given
twice, references to roles, accounts, secrets, services or endpoints that won't exist once the
document is applied, preset params, actions (the same validation as the services store), values
that can't be read. Only a document without problems gets a plan: per object `create`, `update`
(with the names of the fields that change; a value is compared by decrypting the current one and
reported as `value`, never shown), `delete` (only with prune, only in sections the document
declares) or `unchanged`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.auth.accounts import AccountStore
from app.auth.actor import Actor, ensure
from app.auth.models import Role, ServiceAccount, User, UserRole
from app.auth.permissions import Permission, act_as, validate_permissions
from app.config import Settings
from app.configuration.document import (
    BUILTIN_ROLES,
    MANAGE_PERMISSIONS,
    SECTIONS,
    Document,
    Kind,
    RefresherSpec,
    ScheduleSpec,
    SecretSpec,
)
from app.configuration.loader import LoadedDocument
from app.configuration.values import ValueSource, ValueUnavailable
from app.crypto import Keyring
from app.errors import ActionInvalid, InvalidInput
from app.pipeline.analysis import referenced_secrets, validate_action
from app.pipeline.schemas import dump_action, parse_action
from app.presets.binder import REFRESHERS_SLUG, parse_params, refresher_id
from app.presets.catalog import PRESETS, ClientAuthParams
from app.providers.models import Provider
from app.providers.store import DEFINITION_FIELDS, RESERVED_NAMES, SECRET_FIELDS
from app.providers.store import definition as provider_definition
from app.providers.store import problems as provider_problems
from app.schedules.models import Schedule
from app.schedules.store import unpack_environments
from app.secrets.models import ALL_ENVIRONMENTS, Secret, SecretValue, SecretVersion
from app.secrets.rules import why_runs_cannot_write
from app.services.models import Endpoint, Service
from app.services.schemas import ServiceCreate

ChangeAction = Literal["create", "update", "delete", "unchanged"]
# The order objects are created and changed in; deletions run in reverse.
KIND_ORDER: tuple[Kind, ...] = (
    "role",
    "service_account",
    "secret",
    "provider",
    "service",
    "schedule",
)
# A value written by these was not put there by a person: overwriting it may lose a rotation.
ROTATED_SOURCES = ("run", "recovery")


@dataclass
class Binding:
    """How a secret is refreshed: an endpoint, or a preset's action at `refreshers/ID`."""

    refresh_endpoint: str | None
    refresher: RefresherSpec | None = None
    action: list[dict[str, Any]] | None = None


@dataclass
class Change:
    """One object of the plan; `fields` names what changes, never a value."""

    kind: Kind
    name: str
    action: ChangeAction
    fields: list[str] = field(default_factory=list)
    # What carrying it out needs (kept out of every answer).
    spec: Any = field(default=None, repr=False)
    current: Any = field(default=None, repr=False)
    value: Any = field(default=None, repr=False)
    writes_value: bool = field(default=False, repr=False)
    binding: Binding | None = field(default=None, repr=False)
    rebinds: bool = field(default=False, repr=False)
    target: tuple[str, str] | None = field(default=None, repr=False)


@dataclass
class Plan:
    """Every change, in the order it is carried out, and warnings for the person applying."""

    changes: list[Change]
    warnings: list[str]
    prune: bool

    def count(self, action: ChangeAction) -> int:
        """How many objects get this action."""
        return sum(1 for change in self.changes if change.action == action)

    @property
    def changed(self) -> bool:
        """Whether applying changes anything."""
        return any(change.action != "unchanged" for change in self.changes)

    def outcome(self) -> str:
        """`2 created, 1 updated, 0 deleted, 5 unchanged`: the summary once applied."""
        return (
            f"{self.count('create')} created, {self.count('update')} updated, "
            f"{self.count('delete')} deleted, {self.count('unchanged')} unchanged"
        )

    def summary(self) -> str:
        """`2 to create, 1 to update, 0 to delete, 5 unchanged`."""
        return (
            f"{self.count('create')} to create, {self.count('update')} to update, "
            f"{self.count('delete')} to delete, {self.count('unchanged')} unchanged"
        )


def permissions_needed(document: Document) -> list[str]:
    """What a caller must hold to apply the document: the manage permission of every section it
    declares (a plan shows and may change every object of those kinds), `services.manage` too for
    preset refreshers, and `act_as` for every account it names as `run_as` or `refresh_as`."""
    needed: list[str] = []
    for kind, section in SECTIONS.items():
        if getattr(document, section) is not None:
            needed.append(MANAGE_PERMISSIONS[kind])
    secrets = document.secrets or []
    if any(spec.refresher is not None for spec in secrets):
        needed.append(Permission.SERVICES_MANAGE)
    needed += [act_as(spec.refresh_as) for spec in secrets if spec.refresh_as]
    needed += [act_as(spec.run_as) for spec in document.schedules or []]
    return list(dict.fromkeys(needed))


def authorize(actor: Actor, document: Document) -> None:
    """Refuse (401/403 naming the permission) unless the actor may apply the whole document."""
    for permission in permissions_needed(document):
        ensure(actor, permission)


@dataclass
class State:
    """What the database holds now, as the plan needs it."""

    roles: dict[str, Role]
    role_users: dict[str, list[str]]  # role name -> emails of the users holding it
    accounts: dict[str, ServiceAccount]
    account_roles: dict[str, list[str]]
    secrets: dict[str, Secret]
    values: dict[str, SecretValue]
    value_sources: dict[str, str]
    with_values: set[str]
    services: dict[str, Service]
    endpoints: dict[str, list[Endpoint]]
    schedules: dict[str, Schedule]
    providers: dict[str, Provider]


@dataclass
class Final:
    """What will exist once the document is applied: names other objects may refer to."""

    roles: set[str]
    accounts: set[str]
    secrets: dict[str, tuple[bool, bool]]  # name -> (environment_specific, locked)
    endpoints: dict[str, set[str]]  # slug -> readable ids
    # Objects the document doesn't name that stay (their references are checked too).
    kept_secrets: set[str]
    kept_services: set[str]
    kept_schedules: set[str]
    kept_providers: set[str]


def _declared(section: list[Any] | None, key: str) -> list[str] | None:
    """The names a section declares (None: the section is absent)."""
    return None if section is None else [getattr(spec, key) for spec in section]


def _companions(state: State) -> list[str]:
    """Hidden companions (a connected secret's refresh token): kept by their connected secret,
    never declared in a document nor pruned for being absent from one."""
    return [name for name, secret in state.secrets.items() if secret.companion_of is not None]


def _kept(existing: Iterable[str], declared: list[str] | None, prune: bool) -> set[str]:
    """Existing names the document doesn't declare that survive the apply."""
    if declared is None:
        return set(existing)
    if prune:
        return set()
    return set(existing) - set(declared)


class Planner:
    """Checks a document against the database and plans its changes, for one session."""

    def __init__(
        self, session: AsyncSession, keyring: Keyring, settings: Settings, values: ValueSource
    ) -> None:
        self.session = session
        self.keyring = keyring
        self.settings = settings
        self.values = values

    async def plan(self, loaded: LoadedDocument, *, prune: bool) -> Plan:
        """The plan of a document, or `DocumentInvalid` listing every problem."""
        document = loaded.document
        state = await self._state()
        self._check_names(loaded, state)
        final = self._final(document, state, prune)
        bindings = self._check_secrets(loaded, state, final)
        actions = self._check_services(loaded, state, final)
        targets = self._check_schedules(loaded, state, final, bindings)
        providers = self._check_providers(loaded, final)
        self._check_accounts(loaded, final)
        self._check_kept(loaded, state, final)
        values = self._read_values(loaded, state)
        loaded.check()
        warnings: list[str] = []
        changes = [
            *self._role_changes(document, state, prune, warnings),
            *self._account_changes(document, state, prune),
            *self._secret_changes(document, state, prune, bindings, values, warnings),
            *self._service_changes(document, state, prune, actions),
            *self._schedule_changes(document, state, prune, targets),
            *self._provider_changes(document, state, prune, providers),
        ]
        return Plan(changes=changes, warnings=warnings, prune=prune)

    # --- the database now --------------------------------------------------------------------

    async def _state(self) -> State:
        accounts = AccountStore(self.session)
        account_rows = await accounts.service_accounts()
        account_roles = {
            row.name: (await accounts.describe_service_account(row)).roles for row in account_rows
        }
        secrets = {row.name: row for row in (await self.session.execute(select(Secret))).scalars()}
        by_id = {row.id: row for row in secrets.values()}
        values: dict[str, SecretValue] = {}
        with_values: set[str] = set()
        for value in (await self.session.execute(select(SecretValue))).scalars():
            secret = by_id[value.secret_id]
            with_values.add(secret.name)
            wanted = self.settings.environment if secret.environment_specific else ALL_ENVIRONMENTS
            if value.environment == wanted:
                values[secret.name] = value
        value_sources: dict[str, str] = {}
        for name, value in values.items():
            query = select(col(SecretVersion.source)).where(
                col(SecretVersion.secret_id) == value.secret_id,
                col(SecretVersion.environment) == value.environment,
                col(SecretVersion.version) == value.version,
            )
            source = (await self.session.execute(query)).scalar_one_or_none()
            if source is not None:
                value_sources[name] = source
        services = {
            row.slug: row for row in (await self.session.execute(select(Service))).scalars()
        }
        endpoints: dict[str, list[Endpoint]] = {slug: [] for slug in services}
        slugs = {row.id: row.slug for row in services.values()}
        rows = await self.session.execute(select(Endpoint).order_by(col(Endpoint.id)))
        for endpoint in rows.scalars():
            endpoints[slugs[endpoint.service_id]].append(endpoint)
        schedules = {
            row.name: row for row in (await self.session.execute(select(Schedule))).scalars()
        }
        providers = {
            row.name: row for row in (await self.session.execute(select(Provider))).scalars()
        }
        role_users: dict[str, list[str]] = {}
        holders = (
            select(col(Role.name), col(User.email))
            .join(UserRole, col(UserRole.role_id) == col(Role.id))
            .join(User, col(User.id) == col(UserRole.user_id))
            .order_by(col(User.email))
        )
        for role_name, email in await self.session.execute(holders):
            role_users.setdefault(role_name, []).append(email)
        return State(
            roles={role.name: role for role in await accounts.roles()},
            role_users=role_users,
            accounts={row.name: row for row in account_rows},
            account_roles=account_roles,
            secrets=secrets,
            values=values,
            value_sources=value_sources,
            with_values=with_values,
            services=services,
            endpoints=endpoints,
            schedules=schedules,
            providers=providers,
        )

    # --- checks ------------------------------------------------------------------------------

    def _check_names(self, loaded: LoadedDocument, state: State) -> None:
        """Each name once per section; no built-in role; `refreshers` left to the presets."""
        document = loaded.document
        for section, key in (
            ("roles", "name"),
            ("service_accounts", "name"),
            ("secrets", "name"),
            ("services", "slug"),
            ("schedules", "name"),
            ("providers", "name"),
        ):
            first: dict[str, int] = {}
            for index, spec in enumerate(getattr(document, section) or []):
                name = getattr(spec, key)
                if name in first:
                    line = loaded.line(f"{section}[{first[name]}].{key}")
                    loaded.problem(
                        f"{section}[{index}].{key}",
                        f"{name!r} is declared twice (first on line {line})",
                    )
                else:
                    first[name] = index
        for index, role in enumerate(document.roles or []):
            existing = state.roles.get(role.name)
            if role.name in BUILTIN_ROLES or (existing is not None and existing.builtin):
                loaded.problem(
                    f"roles[{index}].name",
                    f"{role.name!r} is a built-in role and can't be declared here "
                    f"(change it with PATCH /v1/roles/{role.name})",
                )
        if any(spec.refresher for spec in document.secrets or []):
            for index, service in enumerate(document.services or []):
                if service.slug == REFRESHERS_SLUG:
                    loaded.problem(
                        f"services[{index}].slug",
                        "the service 'refreshers' holds the actions of the secrets' preset "
                        "refreshers; declare either refresher: on secrets or this service, "
                        "not both",
                    )

    def _final(self, document: Document, state: State, prune: bool) -> Final:
        """What exists after the apply."""
        doc_roles = _declared(document.roles, "name")
        roles = _kept(state.roles, doc_roles, prune) | set(doc_roles or [])
        roles |= {name for name, role in state.roles.items() if role.builtin}
        doc_accounts = _declared(document.service_accounts, "name")
        accounts = _kept(state.accounts, doc_accounts, prune) | set(doc_accounts or [])
        doc_secrets = _declared(document.secrets, "name")
        if doc_secrets is not None:
            doc_secrets = doc_secrets + _companions(state)
        kept_secrets = _kept(state.secrets, doc_secrets, prune)
        secrets = {
            name: (state.secrets[name].environment_specific, state.secrets[name].locked)
            for name in kept_secrets
        }
        for spec in document.secrets or []:
            secrets[spec.name] = (spec.environment_specific, spec.locked)
        # A companion stays as long as its connected secret does (the database cascades it).
        owners = {row.id: name for name, row in state.secrets.items()}
        for name in _companions(state):
            if owners.get(state.secrets[name].companion_of) in secrets:
                row = state.secrets[name]
                secrets[name] = (row.environment_specific, row.locked)
        refreshers = [spec.name for spec in document.secrets or [] if spec.refresher]
        kept_services = _kept(state.services, _declared(document.services, "slug"), prune)
        if refreshers and REFRESHERS_SLUG in state.services:
            kept_services.add(REFRESHERS_SLUG)
        endpoints = {slug: {e.readable_id for e in state.endpoints[slug]} for slug in kept_services}
        for service in document.services or []:
            endpoints[service.slug] = {e.readable_id for e in service.endpoints}
        if refreshers:
            endpoints.setdefault(REFRESHERS_SLUG, set()).update(map(refresher_id, refreshers))
        return Final(
            roles=roles,
            accounts=accounts,
            secrets=secrets,
            endpoints=endpoints,
            kept_secrets=kept_secrets,
            kept_services=kept_services,
            kept_schedules=_kept(state.schedules, _declared(document.schedules, "name"), prune),
            kept_providers=_kept(state.providers, _declared(document.providers, "name"), prune),
        )

    @staticmethod
    def _endpoint_problem(final: Final, slug: str, readable_id: str) -> str | None:
        """Why `slug/readable_id` won't exist after the apply, or None."""
        if slug not in final.endpoints:
            return f"service {slug!r} does not exist (declare it under services)"
        if readable_id not in final.endpoints[slug]:
            return f"service {slug!r} has no endpoint {readable_id!r}"
        return None

    def _check_accounts(self, loaded: LoadedDocument, final: Final) -> None:
        """Every role an account holds exists."""
        for index, spec in enumerate(loaded.document.service_accounts or []):
            for position, role in enumerate(spec.roles):
                if role not in final.roles:
                    loaded.problem(
                        f"service_accounts[{index}].roles[{position}]",
                        f"role {role!r} does not exist (declare it under roles)",
                    )

    def _check_secrets(
        self, loaded: LoadedDocument, state: State, final: Final
    ) -> dict[str, Binding]:
        """References of each secret; answers the binding each declared secret should have."""
        bindings: dict[str, Binding] = {}
        for index, spec in enumerate(loaded.document.secrets or []):
            at = f"secrets[{index}]"
            if spec.refresh_as and spec.refresh_as not in final.accounts:
                loaded.problem(
                    f"{at}.refresh_as",
                    f"service account {spec.refresh_as!r} does not exist "
                    "(declare it under service_accounts)",
                )
            current = state.secrets.get(spec.name)
            if (
                current is not None
                and current.environment_specific != spec.environment_specific
                and spec.name in state.with_values
            ):
                loaded.problem(
                    f"{at}.environment_specific",
                    f"secret {spec.name!r} already holds values; environment_specific can only "
                    "change on a secret without values (delete and recreate it)",
                )
            if spec.refresh_endpoint and spec.refresher:
                loaded.problem(f"{at}.refresher", "give refresh_endpoint or refresher, not both")
            elif spec.refresh_endpoint:
                slug, readable_id = spec.refresh_endpoint.split("/", 1)
                why = self._endpoint_problem(final, slug, readable_id)
                if why:
                    loaded.problem(f"{at}.refresh_endpoint", why)
                bindings[spec.name] = Binding(spec.refresh_endpoint)
            elif spec.refresher:
                action = self._check_refresher(loaded, at, spec, spec.refresher, state, final)
                endpoint = f"{REFRESHERS_SLUG}/{refresher_id(spec.name)}"
                bindings[spec.name] = Binding(endpoint, spec.refresher, action)
            else:
                bindings[spec.name] = Binding(None)
        return bindings

    def _check_refresher(
        self,
        loaded: LoadedDocument,
        at: str,
        spec: SecretSpec,
        refresher: RefresherSpec,
        state: State,
        final: Final,
    ) -> list[dict[str, Any]] | None:
        """The preset's params (through the preset's own model) and the action it expands to."""
        preset = PRESETS[refresher.preset]
        try:
            params = parse_params(preset, refresher.params)
        except InvalidInput as exc:
            for error in exc.extra.get("errors", []):
                loaded.problem(f"{at}.refresher.{error['path']}", error["message"])
            return None
        problems = 0
        for param, name in params.secret_params().items():
            if name not in final.secrets:
                loaded.problem(
                    f"{at}.refresher.params.{param}",
                    f"secret {name!r} does not exist (declare it under secrets)",
                )
                problems += 1
        written = getattr(params, "refresh_token_secret", None)
        if written == spec.name:
            loaded.problem(
                f"{at}.refresher.params.refresh_token_secret",
                "must differ from the secret being refreshed",
            )
            problems += 1
        if isinstance(params, ClientAuthParams) and params.client_id_secret == spec.name:
            loaded.problem(
                f"{at}.refresher.params.client_id_secret", "can't be the secret being refreshed"
            )
            problems += 1
        writes = (
            (f"{at}.refresher", spec.name),
            (f"{at}.refresher.params.refresh_token_secret", written),
        )
        for where, target in writes:
            if target is None or target not in final.secrets:
                continue
            environment_specific, locked = final.secrets[target]
            why = why_runs_cannot_write(environment_specific=environment_specific, locked=locked)
            if why is not None:
                loaded.problem(
                    where,
                    f"secret {target!r} {why}; runs write only unlocked, "
                    "environment-specific secrets, so this refresher could never write it",
                )
                problems += 1
        if problems:
            return None
        service = state.services.get(REFRESHERS_SLUG)
        variables = {v["name"] for v in service.variables} if service else set()
        try:
            nodes = validate_action(
                preset.expand(params, spec.name),
                declared_variables=variables,
                known_secrets=set(final.secrets),
            )
        except ActionInvalid as exc:
            loaded.problem(f"{at}.refresher", exc.message)
            return None
        return dump_action(nodes)

    def _check_services(
        self, loaded: LoadedDocument, state: State, final: Final
    ) -> dict[str, list[list[dict[str, Any]]]]:
        """Each endpoint's action as the services store checks it; answers them normalized."""
        actions: dict[str, list[list[dict[str, Any]]]] = {}
        for index, service in enumerate(loaded.document.services or []):
            normalized = []
            declared = {v.name for v in service.variables}
            for position, endpoint in enumerate(service.endpoints):
                prefix = f"services[{index}].endpoints[{position}].action"
                try:
                    nodes = validate_action(
                        endpoint.action,
                        declared_variables=declared,
                        known_secrets=set(final.secrets),
                        prefix=prefix,
                    )
                except ActionInvalid as exc:
                    path = str(exc.extra.get("path") or prefix)
                    loaded.problem(path, exc.message.removeprefix(f"{path}: "))
                    continue
                normalized.append(dump_action(nodes))
            actions[service.slug] = normalized
        return actions

    def _check_schedules(
        self,
        loaded: LoadedDocument,
        state: State,
        final: Final,
        bindings: dict[str, Binding],
    ) -> dict[str, tuple[str, str]]:
        """What each schedule runs (a secret resolved to its endpoint) and as whom."""
        targets: dict[str, tuple[str, str]] = {}
        for index, spec in enumerate(loaded.document.schedules or []):
            at = f"schedules[{index}]"
            if spec.run_as not in final.accounts:
                loaded.problem(
                    f"{at}.run_as",
                    f"service account {spec.run_as!r} does not exist "
                    "(declare it under service_accounts)",
                )
            target = self._schedule_target(loaded, at, spec, state, final, bindings)
            if target is not None:
                targets[spec.name] = target
        return targets

    def _schedule_target(
        self,
        loaded: LoadedDocument,
        at: str,
        spec: ScheduleSpec,
        state: State,
        final: Final,
        bindings: dict[str, Binding],
    ) -> tuple[str, str] | None:
        if spec.secret is not None:
            if spec.service is not None or spec.endpoint is not None:
                loaded.problem(f"{at}.secret", "give secret, or service and endpoint, not both")
                return None
            endpoint: str | None
            if spec.secret in bindings:
                endpoint = bindings[spec.secret].refresh_endpoint
            elif spec.secret in final.kept_secrets:
                endpoint = state.secrets[spec.secret].refresh_endpoint
            else:
                loaded.problem(
                    f"{at}.secret",
                    f"secret {spec.secret!r} does not exist (declare it under secrets)",
                )
                return None
            if endpoint is None:
                loaded.problem(
                    f"{at}.secret",
                    f"secret {spec.secret!r} has no refresh_endpoint or refresher to run",
                )
                return None
            slug, readable_id = endpoint.split("/", 1)
            return slug, readable_id
        if spec.service is None or spec.endpoint is None:
            missing = "endpoint" if spec.service is not None else "service"
            loaded.problem(
                f"{at}.{missing}" if spec.endpoint or spec.service else at,
                "a schedule runs a service's endpoint (service and endpoint) or a secret's "
                "refresh (secret)",
            )
            return None
        why = self._endpoint_problem(final, spec.service, spec.endpoint)
        if why:
            field_name = "service" if spec.service not in final.endpoints else "endpoint"
            loaded.problem(f"{at}.{field_name}", why)
            return None
        return spec.service, spec.endpoint

    def _check_providers(self, loaded: LoadedDocument, final: Final) -> dict[str, dict[str, Any]]:
        """Each provider as the provider store checks it; answers their filled-in fields."""
        definitions: dict[str, dict[str, Any]] = {}
        for index, spec in enumerate(loaded.document.providers or []):
            at = f"providers[{index}]"
            if spec.name in RESERVED_NAMES:
                loaded.problem(f"{at}.name", f"{spec.name!r} can't name a provider")
            values, found = provider_definition(spec)
            found += provider_problems(values, final.secrets)
            for path, message in found:
                loaded.problem(f"{at}.{path}", message)
            definitions[spec.name] = values
        return definitions

    def _check_kept(self, loaded: LoadedDocument, state: State, final: Final) -> None:
        """Objects the document leaves alone must not lose what they refer to."""
        for name in sorted(final.kept_providers):
            provider = state.providers[name]
            for field_name in SECRET_FIELDS:
                secret_name = getattr(provider, field_name)
                if secret_name in state.secrets and secret_name not in final.secrets:
                    loaded.problem(
                        "secrets",
                        f"this deletes secret {secret_name!r}, but provider {name!r} (not in "
                        f"this document) names it as its {field_name}",
                    )
        for name in sorted(final.kept_secrets):
            secret = state.secrets[name]
            if secret.refresh_endpoint:
                slug, readable_id = secret.refresh_endpoint.split("/", 1)
                if _exists_now(state, slug, readable_id) and self._endpoint_problem(
                    final, slug, readable_id
                ):
                    loaded.problem(
                        "services",
                        f"this removes {secret.refresh_endpoint}, but secret {name!r} (not in "
                        "this document) refreshes through it; change its refresh_endpoint first",
                    )
            if (
                secret.refresh_as
                and secret.refresh_as in state.accounts
                and secret.refresh_as not in final.accounts
            ):
                loaded.problem(
                    "service_accounts",
                    f"this deletes service account {secret.refresh_as!r}, but secret {name!r} "
                    "(not in this document) is refreshed as it",
                )
        for name in sorted(final.kept_schedules):
            schedule = state.schedules[name]
            slug, readable_id = schedule.service_slug, schedule.endpoint_readable_id
            if _exists_now(state, slug, readable_id) and self._endpoint_problem(
                final, slug, readable_id
            ):
                loaded.problem(
                    "services",
                    f"this removes {slug}/{readable_id}, but schedule {name!r} (not in this "
                    "document) runs it",
                )
            if schedule.run_as in state.accounts and schedule.run_as not in final.accounts:
                loaded.problem(
                    "service_accounts",
                    f"this deletes service account {schedule.run_as!r}, but schedule {name!r} "
                    "(not in this document) runs as it",
                )
        for slug in sorted(final.kept_services):
            for endpoint in state.endpoints[slug]:
                used = referenced_secrets(parse_action(endpoint.action))
                lost = sorted(n for n in used if n in state.secrets and n not in final.secrets)
                if lost:
                    loaded.problem(
                        "secrets",
                        f"this deletes secret(s) {', '.join(lost)}, but endpoint "
                        f"{slug}/{endpoint.readable_id} (not in this document) uses them",
                    )

    def _read_values(self, loaded: LoadedDocument, state: State) -> dict[str, Any]:
        """The value of every secret whose `value_from` must be read (all at once, so every
        missing variable or file is reported together)."""
        values: dict[str, Any] = {}
        for index, spec in enumerate(loaded.document.secrets or []):
            if spec.value_from is None:
                continue
            if spec.value_from.initial_only and spec.name in state.values:
                continue  # it has its value; a rotated one must not be put back
            try:
                values[spec.name] = self.values.read(spec.value_from)
            except ValueUnavailable as exc:
                which = "env" if spec.value_from.env is not None else "file"
                loaded.problem(f"secrets[{index}].value_from.{which}", str(exc))
        return values

    # --- changes -----------------------------------------------------------------------------

    @staticmethod
    def _pruned(
        kind: Kind, existing: Mapping[str, Any], declared: list[str] | None, prune: bool
    ) -> list[Change]:
        """Deletions of what exists but isn't declared (only with `prune`)."""
        if declared is None or not prune:
            return []
        return [
            Change(kind, name, "delete", current=existing[name])
            for name in sorted(set(existing) - set(declared))
        ]

    def _role_changes(
        self, document: Document, state: State, prune: bool, warnings: list[str]
    ) -> list[Change]:
        if document.roles is None:
            return []
        changes = []
        for spec in document.roles:
            permissions = validate_permissions(spec.permissions)
            role = state.roles.get(spec.name)
            if role is None:
                changes.append(Change("role", spec.name, "create", spec=spec))
                continue
            fields = [
                name
                for name, changed in (
                    ("description", role.description != spec.description),
                    ("permissions", list(role.permissions) != permissions),
                )
                if changed
            ]
            action: ChangeAction = "update" if fields else "unchanged"
            changes.append(Change("role", spec.name, action, fields, spec=spec, current=role))
        custom = {name: role for name, role in state.roles.items() if not role.builtin}
        pruned = self._pruned("role", custom, [s.name for s in document.roles], prune)
        for change in pruned:
            # Users aren't declared in a document: say who loses the role, before it happens.
            if holders := state.role_users.get(change.name):
                warnings.append(
                    f"role {change.name}: pruning it takes it from user(s) "
                    f"{', '.join(holders)}; give them another role first "
                    "(PATCH /v1/users/EMAIL) if they still need its permissions"
                )
        return changes + pruned

    def _account_changes(self, document: Document, state: State, prune: bool) -> list[Change]:
        if document.service_accounts is None:
            return []
        changes = []
        for spec in document.service_accounts:
            account = state.accounts.get(spec.name)
            if account is None:
                changes.append(Change("service_account", spec.name, "create", spec=spec))
                continue
            fields = [
                name
                for name, changed in (
                    ("description", account.description != spec.description),
                    ("roles", set(state.account_roles[spec.name]) != set(spec.roles)),
                )
                if changed
            ]
            action: ChangeAction = "update" if fields else "unchanged"
            changes.append(
                Change("service_account", spec.name, action, fields, spec=spec, current=account)
            )
        declared = [s.name for s in document.service_accounts]
        return changes + self._pruned("service_account", state.accounts, declared, prune)

    def _secret_changes(
        self,
        document: Document,
        state: State,
        prune: bool,
        bindings: dict[str, Binding],
        values: dict[str, Any],
        warnings: list[str],
    ) -> list[Change]:
        if document.secrets is None:
            return []
        changes = []
        for spec in document.secrets:
            binding = bindings[spec.name]
            secret = state.secrets.get(spec.name)
            unlisted = spec.allowed_destinations is None and (
                secret is None or secret.allowed_destinations is None
            )
            has_value = spec.name in values
            if secret is None:
                change = Change("secret", spec.name, "create", spec=spec, binding=binding)
                change.fields = ["value"] if has_value else []
                change.value, change.writes_value = values.get(spec.name), has_value
                change.rebinds = binding.refresh_endpoint is not None
                changes.append(change)
                if unlisted:
                    warnings.append(_unlisted(spec.name))
                continue
            fields = [
                name
                for name in (
                    "description",
                    "environment_specific",
                    "locked",
                    "refresh_as",
                    "refresh_before_expiry_seconds",
                )
                if getattr(secret, name) != getattr(spec, name)
            ]
            if spec.allowed_destinations is not None and (
                secret.allowed_destinations != spec.allowed_destinations
            ):
                fields.append("allowed_destinations")  # absent: the stored list stays
            rebinds = secret.refresh_endpoint != binding.refresh_endpoint
            if binding.refresher is not None:
                current_action = self._current_action(state, binding.refresh_endpoint)
                rebinds = rebinds or current_action != binding.action
            if rebinds:
                fields.append("refresher" if binding.refresher else "refresh_endpoint")
            writes_value = False
            if has_value:
                current = state.values.get(spec.name)
                stored = self.keyring.decrypt(current.ciphertext) if current else None
                writes_value = current is None or stored != values[spec.name]
            if writes_value:
                fields.append("value")
                source = state.value_sources.get(spec.name)
                if source in ROTATED_SOURCES:
                    warnings.append(
                        f"secret {spec.name}: the document's value replaces one a run wrote "
                        f"(source {source}); for values that runs rotate, give value_from "
                        "initial_only: true"
                    )
            action: ChangeAction = "update" if fields else "unchanged"
            if unlisted and fields:
                warnings.append(_unlisted(spec.name))
            changes.append(
                Change(
                    "secret",
                    spec.name,
                    action,
                    fields,
                    spec=spec,
                    current=secret,
                    value=values.get(spec.name) if writes_value else None,
                    writes_value=writes_value,
                    binding=binding,
                    rebinds=rebinds,
                )
            )
        declared = [s.name for s in document.secrets] + _companions(state)
        return changes + self._pruned("secret", state.secrets, declared, prune)

    @staticmethod
    def _current_action(state: State, refresh_endpoint: str | None) -> list[dict[str, Any]] | None:
        if refresh_endpoint is None:
            return None
        slug, readable_id = refresh_endpoint.split("/", 1)
        for endpoint in state.endpoints.get(slug, []):
            if endpoint.readable_id == readable_id:
                return endpoint.action
        return None

    def _service_changes(
        self,
        document: Document,
        state: State,
        prune: bool,
        actions: dict[str, list[list[dict[str, Any]]]],
    ) -> list[Change]:
        if document.services is None:
            return []
        changes = []
        for spec in document.services:
            service = state.services.get(spec.slug)
            if service is None:
                changes.append(Change("service", spec.slug, "create", spec=spec))
                continue
            fields = _service_fields(spec, actions[spec.slug], service, state.endpoints[spec.slug])
            action: ChangeAction = "update" if fields else "unchanged"
            changes.append(Change("service", spec.slug, action, fields, spec=spec, current=service))
        declared = [s.slug for s in document.services]
        if any(spec.refresher for spec in document.secrets or []):
            declared.append(REFRESHERS_SLUG)  # the presets' own service is never pruned then
        return changes + self._pruned("service", state.services, declared, prune)

    def _schedule_changes(
        self,
        document: Document,
        state: State,
        prune: bool,
        targets: dict[str, tuple[str, str]],
    ) -> list[Change]:
        if document.schedules is None:
            return []
        changes = []
        for spec in document.schedules:
            target = targets[spec.name]
            schedule = state.schedules.get(spec.name)
            if schedule is None:
                changes.append(Change("schedule", spec.name, "create", spec=spec, target=target))
                continue
            environments = sorted(set(spec.environments)) if spec.environments else None
            fields = [
                name
                for name, changed in (
                    ("description", schedule.description != spec.description),
                    ("service", schedule.service_slug != target[0]),
                    ("endpoint", schedule.endpoint_readable_id != target[1]),
                    ("cron", schedule.cron != spec.cron),
                    ("timezone", schedule.timezone != spec.timezone),
                    ("run_as", schedule.run_as != spec.run_as),
                    ("enabled", schedule.enabled != spec.enabled),
                    ("environments", unpack_environments(schedule.environments) != environments),
                )
                if changed
            ]
            action: ChangeAction = "update" if fields else "unchanged"
            changes.append(
                Change(
                    "schedule",
                    spec.name,
                    action,
                    fields,
                    spec=spec,
                    current=schedule,
                    target=target,
                )
            )
        declared = [s.name for s in document.schedules]
        return changes + self._pruned("schedule", state.schedules, declared, prune)

    def _provider_changes(
        self,
        document: Document,
        state: State,
        prune: bool,
        definitions: dict[str, dict[str, Any]],
    ) -> list[Change]:
        if document.providers is None:
            return []
        changes = []
        for spec in document.providers:
            provider = state.providers.get(spec.name)
            if provider is None:
                changes.append(Change("provider", spec.name, "create", spec=spec))
                continue
            values = definitions[spec.name]
            fields = [name for name in DEFINITION_FIELDS if getattr(provider, name) != values[name]]
            action: ChangeAction = "update" if fields else "unchanged"
            changes.append(
                Change("provider", spec.name, action, fields, spec=spec, current=provider)
            )
        declared = [s.name for s in document.providers]
        return changes + self._pruned("provider", state.providers, declared, prune)


def _exists_now(state: State, slug: str, readable_id: str) -> bool:
    """Whether the endpoint `slug/readable_id` is stored now."""
    return any(e.readable_id == readable_id for e in state.endpoints.get(slug, []))


def _service_fields(
    spec: ServiceCreate,
    actions: list[list[dict[str, Any]]],
    service: Service,
    endpoints: list[Endpoint],
) -> list[str]:
    """The names of what differs between a declared service and the stored one."""
    fields = [
        name
        for name, changed in (
            ("name", service.name != spec.name),
            ("description", service.description != spec.description),
            ("variables", service.variables != [v.model_dump(mode="json") for v in spec.variables]),
        )
        if changed
    ]
    stored = {e.readable_id: e for e in endpoints}
    declared_ids = [e.readable_id for e in spec.endpoints]
    for endpoint, action in zip(spec.endpoints, actions, strict=True):
        current = stored.get(endpoint.readable_id)
        if current is None:
            fields.append(f"endpoints.{endpoint.readable_id} (new)")
            continue
        changed = [
            name
            for name, differs in (
                ("name", current.name != endpoint.name),
                ("description", current.description != endpoint.description),
                ("methods", list(current.methods) != list(endpoint.methods)),
                ("enable_log", current.enable_log != endpoint.enable_log),
                ("action", current.action != action),
            )
            if differs
        ]
        fields += [f"endpoints.{endpoint.readable_id}.{name}" for name in changed]
    fields += [f"endpoints.{rid} (removed)" for rid in stored if rid not in declared_ids]
    if not fields and [e.readable_id for e in endpoints] != declared_ids:
        fields.append("endpoints (order)")
    return fields


def _unlisted(secret: str) -> str:
    """The warning for a secret saved without allowed destinations."""
    return f"secret {secret}: no allowed_destinations, so a run may send its value to any origin"
