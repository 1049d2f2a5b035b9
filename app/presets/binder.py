"""Binding a preset to a secret: expand it, save the action as an endpoint, point the secret at it.

Every refresher lives in the service `refreshers`, one endpoint per secret, so binding is
predictable (the endpoint of ACCESS_TOKEN is `refreshers/ACCESS_TOKEN`) and binding again replaces
that endpoint's action. The action is validated exactly as any saved action is.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.config import Settings
from app.crypto import Keyring
from app.db import utcnow
from app.errors import Conflict, InvalidInput, NotFound
from app.pipeline.analysis import ensure_author_may_save, validate_action
from app.pipeline.schemas import dump_action
from app.pipeline.wire import origin_of_url
from app.presets.catalog import PRESETS, ClientAuthParams, Preset, PresetParams
from app.presets.schemas import RefresherRead, RefresherRequest
from app.schemas import describe_error, format_location
from app.secrets.models import Secret
from app.secrets.rules import CompanionUse, Unwritable, why_runs_cannot_write
from app.secrets.schemas import SecretUpdate
from app.secrets.store import SecretStore
from app.services.models import Endpoint, Service
from app.services.schemas import ServiceCreate
from app.services.store import ServiceStore

if TYPE_CHECKING:
    from app.auth.actor import Actor

REFRESHERS_SLUG = "refreshers"
READABLE_ID_LIMIT = 64


def refresher_id(secret: str) -> str:
    """The readable_id of a secret's refresher endpoint: the secret's own name when it fits.

    Longer names (secret names go to 128 characters, readable ids to 64) get `0-HASH-PREFIX`:
    a secret name starts with a letter, so such an id can't be another secret's name.
    """
    if len(secret) <= READABLE_ID_LIMIT:
        return secret
    digest = hashlib.sha256(secret.encode()).hexdigest()[:12]
    return f"0-{digest}-{secret[: READABLE_ID_LIMIT - 15]}"


def invalid(problems: list[tuple[str, str]]) -> InvalidInput:
    """A 422 listing every problem; the message names the first."""
    path, message = problems[0]
    errors = [{"path": p, "message": m} for p, m in problems]
    return InvalidInput(f"{path}: {message}", path=path, errors=errors)


def parse_params(preset: Preset, raw: dict[str, object]) -> PresetParams:
    """The preset's params, or a 422 whose paths start at `params`."""
    try:
        params = preset.params.model_validate(raw)
    except ValidationError as exc:
        problems = [
            (format_location(("params", *error["loc"])), describe_error(dict(error)))
            for error in exc.errors()
        ]
        raise invalid(problems) from None
    found = params.problems()
    if found:
        raise invalid([(f"params.{name}", message) for name, message in found])
    return params


class PresetBinder:
    """Binds presets to secrets, for one session (the request commits once at the end)."""

    def __init__(self, session: AsyncSession, keyring: Keyring, settings: Settings) -> None:
        self.session = session
        self.secrets = SecretStore(session, keyring, settings)
        self.services = ServiceStore(session)

    async def bind(self, name: str, request: RefresherRequest, author: Actor) -> RefresherRead:
        """Expand the preset for secret `name`, save it as its refresher, and bind it; `author`
        needs `secrets.use` of every secret the action reads, as for any saved action."""
        target = await self.secrets.get(name, CompanionUse.BIND)
        preset = PRESETS[request.preset]
        params = parse_params(preset, request.params)
        known = await self._known_secrets()
        await self._check_secrets(target, params, known)
        readable_id = refresher_id(target.name)
        refresh_endpoint = f"{REFRESHERS_SLUG}/{readable_id}"
        await self._refuse_shared(target, refresh_endpoint)
        service = await self._refreshers(author)
        # The same validation as any saved action (services store, PUT /v1/services/{slug}).
        expanded = preset.expand(params, target.name)
        nodes = validate_action(
            expanded,
            declared_variables={v["name"] for v in service.variables},
            known_secrets=known,
        )
        ensure_author_may_save(author, nodes, "action")
        await self._allow_token_endpoint(expanded, params)
        endpoint = await self._put_endpoint(service, readable_id, target.name, preset)
        endpoint.action = dump_action(nodes)
        await self._flush(refresh_endpoint)
        await self.secrets.update(target, SecretUpdate(refresh_endpoint=refresh_endpoint))
        return RefresherRead(
            secret=target.name,
            preset=preset.name,
            service=REFRESHERS_SLUG,
            endpoint=readable_id,
            refresh_endpoint=refresh_endpoint,
            params=params.model_dump(mode="json", exclude_none=True),
            action=endpoint.action,
        )

    async def _allow_token_endpoint(
        self, action: list[dict[str, Any]], params: PresetParams
    ) -> None:
        """The credentials the preset sends (client id and secret, refresh token, keys) may go
        to its token endpoint's origin: added to each one's allowed_destinations (a secret that
        declared none is restricted to it). Not the target: its value goes to other APIs. A
        token URL read from a secret at run time (a key file's token_uri) is left alone."""
        urls = [
            node["url"]
            for node in action
            if node.get("type") == "web_request" and "{{" not in node["url"]
        ]
        if not urls:
            return
        destinations = {origin_of_url(url) for url in urls}
        for name in sorted(set(params.secret_params().values())):
            secret = await self.secrets.get(name)
            allowed = list(secret.allowed_destinations or [])
            missing = sorted(destinations - set(allowed))
            if missing or secret.allowed_destinations is None:
                update = SecretUpdate(allowed_destinations=allowed + missing)
                await self.secrets.update(secret, update)

    async def _known_secrets(self) -> set[str]:
        """Names of every secret."""
        return set((await self.session.execute(select(col(Secret.name)))).scalars())

    async def _check_secrets(self, target: Secret, params: PresetParams, known: set[str]) -> None:
        """Every secret a param names exists; every secret the action writes can be written."""
        problems = [
            (f"params.{param}", f"secret {name!r} does not exist (create it first)")
            for param, name in params.secret_params().items()
            if name not in known
        ]
        if problems:
            raise invalid(problems)
        written = getattr(params, "refresh_token_secret", None)
        if written == target.name:
            raise invalid(
                [("params.refresh_token_secret", "must differ from the secret being refreshed")]
            )
        if isinstance(params, ClientAuthParams) and params.client_id_secret == target.name:
            raise invalid([("params.client_id_secret", "can't be the secret being refreshed")])
        why = self._unwritable(target)
        if why:
            raise Conflict(f"secret {target.name!r} {why}; a refresher could never write it")
        if written is not None:
            why = self._unwritable(await self.secrets.get(written))
            if why:
                raise invalid(
                    [("params.refresh_token_secret", f"secret {written!r} {why}; it is written")]
                )

    @staticmethod
    def _unwritable(secret: Secret) -> str | None:
        """Why a run could not write this secret (the runner's pre-flight rules), or None."""
        why = why_runs_cannot_write(
            environment_specific=secret.environment_specific, locked=secret.locked
        )
        if why is Unwritable.NOT_ENVIRONMENT_SPECIFIC:
            return f"{why} (runs write only those)"
        return why

    async def _refuse_shared(self, target: Secret, refresh_endpoint: str) -> None:
        """The endpoint belongs to one secret: replacing its action must not change another's."""
        query = select(col(Secret.name)).where(
            col(Secret.refresh_endpoint) == refresh_endpoint, col(Secret.name) != target.name
        )
        others = sorted((await self.session.execute(query)).scalars())
        if others:
            raise Conflict(
                f"secrets {', '.join(others)} also refresh through {refresh_endpoint}; "
                "PATCH their refresh_endpoint first"
            )

    async def _refreshers(self, author: Actor) -> Service:
        """The service that holds every refresher, created on first use."""
        try:
            return await self.services.get(REFRESHERS_SLUG)
        except NotFound:
            return await self.services.create(
                ServiceCreate(
                    slug=REFRESHERS_SLUG,
                    name="Refreshers",
                    description="Refresh actions generated by presets "
                    "(POST /v1/secrets/{name}/refresher), one endpoint per secret.",
                ),
                author,
            )

    async def _put_endpoint(
        self, service: Service, readable_id: str, secret: str, preset: Preset
    ) -> Endpoint:
        """The secret's endpoint in `refreshers`, created or taken over for this preset."""
        query = select(Endpoint).where(
            col(Endpoint.service_id) == service.id, col(Endpoint.readable_id) == readable_id
        )
        endpoint = (await self.session.execute(query)).scalar_one_or_none()
        if endpoint is None:
            assert service.id is not None
            endpoint = Endpoint(service_id=service.id, readable_id=readable_id, name="")
            self.session.add(endpoint)
        endpoint.name = f"Refresh {secret}"
        endpoint.description = (
            f"Generated by the preset {preset.name}; edit freely. Binding a preset to {secret} "
            "again replaces this action."
        )
        endpoint.methods = ["GET", "POST"]
        endpoint.enable_log = True
        service.updated_at = utcnow()
        return endpoint

    async def _flush(self, refresh_endpoint: str) -> None:
        """Store the endpoint; a concurrent bind of the same secret is a 409, not a 500."""
        try:
            await self.session.flush()
        except IntegrityError:
            raise Conflict(
                f"{refresh_endpoint} was created by a concurrent request; try again"
            ) from None
