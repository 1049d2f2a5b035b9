"""The rules of the services domain: services, endpoints, and validation of their actions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db import flushed_connection, one_or_not_found, utcnow
from app.errors import AlreadyExists, Conflict, NotFound
from app.pipeline.analysis import ensure_author_may_save, validate_action
from app.pipeline.schemas import dump_action
from app.secrets.models import Secret
from app.services.models import Endpoint, Service
from app.services.schemas import (
    SLUG_PATTERN,
    EndpointRead,
    ServiceBody,
    ServiceCreate,
    ServiceRead,
    ServiceVariable,
)

if TYPE_CHECKING:
    from app.auth.actor import Actor

# The lookups of every run, built once (building a statement costs more than running it).
_SERVICE = select(Service).where(col(Service.slug) == bindparam("slug"))
SERVICE_TABLE = Service.__table__  # type: ignore[attr-defined]
ENDPOINT_TABLE = Endpoint.__table__  # type: ignore[attr-defined]
_SERVICE_AND_ENDPOINT = (
    select(
        SERVICE_TABLE.c.slug,
        SERVICE_TABLE.c.variables,
        ENDPOINT_TABLE.c.readable_id,
        ENDPOINT_TABLE.c.methods,
        ENDPOINT_TABLE.c.enable_log,
        ENDPOINT_TABLE.c.action,
    )
    .select_from(
        SERVICE_TABLE.outerjoin(
            ENDPOINT_TABLE,
            (ENDPOINT_TABLE.c.service_id == SERVICE_TABLE.c.id)
            & (ENDPOINT_TABLE.c.readable_id == bindparam("readable_id")),
        )
    )
    .where(SERVICE_TABLE.c.slug == bindparam("slug"))
)


@dataclass(frozen=True)
class ServiceState:
    """What a run needs of a service (read with Core: loading ORM objects costs more than the
    query, and every run reads one)."""

    slug: str
    variables: list[dict[str, Any]]


@dataclass(frozen=True)
class EndpointState:
    """What a run needs of an endpoint."""

    readable_id: str
    methods: list[str]
    enable_log: bool
    action: list[dict[str, Any]]


def _no_service(slug: str) -> NotFound:
    return NotFound(f"service {slug!r} does not exist")


def _check_slug(slug: str) -> None:
    """No service can have a slug off the pattern; and PostgreSQL would refuse some (NUL)."""
    if not re.fullmatch(SLUG_PATTERN, slug):
        raise _no_service(slug)


class ServiceStore:
    """Services and their endpoints, for one session."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, slug: str) -> Service:
        """The service `slug`, or NotFound."""
        _check_slug(slug)
        return await one_or_not_found(self.session, _SERVICE, f"service {slug!r}", {"slug": slug})

    async def endpoints(self, service: Service) -> list[Endpoint]:
        """A service's endpoints in the order they were written."""
        query = (
            select(Endpoint)
            .where(col(Endpoint.service_id) == service.id)
            .order_by(col(Endpoint.id))
        )
        return list((await self.session.execute(query)).scalars())

    async def get_endpoint(self, slug: str, readable_id: str) -> tuple[ServiceState, EndpointState]:
        """A service and one of its endpoints as a run needs them, or NotFound naming which is
        missing (one query)."""
        _check_slug(slug)
        # A service added in this transaction counts (apply).
        connection = await flushed_connection(self.session)
        found = await connection.execute(
            _SERVICE_AND_ENDPOINT, {"slug": slug, "readable_id": readable_id}
        )
        row = found.one_or_none()
        if row is None:
            raise _no_service(slug)
        if row.readable_id is None:
            raise NotFound(f"service {slug!r} has no endpoint {readable_id!r}")
        return ServiceState(row.slug, row.variables), EndpointState(
            row.readable_id, row.methods, row.enable_log, row.action
        )

    async def describe(self, service: Service) -> ServiceRead:
        """A service as the API shows it."""
        return ServiceRead(
            slug=service.slug,
            name=service.name,
            description=service.description,
            variables=[ServiceVariable.model_validate(v) for v in service.variables],
            endpoints=[
                EndpointRead(
                    readable_id=e.readable_id,
                    name=e.name,
                    description=e.description,
                    methods=e.methods,
                    enable_log=e.enable_log,
                    action=e.action,
                )
                for e in await self.endpoints(service)
            ],
            created_at=service.created_at,
            updated_at=service.updated_at,
        )

    async def list_all(self) -> list[ServiceRead]:
        """Every service, by slug."""
        query = select(Service).order_by(col(Service.slug))
        services = (await self.session.execute(query)).scalars().all()
        return [await self.describe(service) for service in services]

    async def _validated_endpoints(self, body: ServiceBody, author: Actor) -> list[Endpoint]:
        """Endpoint rows of a body whose actions name only known secrets and variables, keep
        secrets where they belong, and use only secrets `author` may use. Every endpoint counts,
        changed or not: the body also sets the variables the actions run with."""
        known_secrets = set((await self.session.execute(select(col(Secret.name)))).scalars())
        declared = {v.name for v in body.variables}
        rows = []
        for index, endpoint in enumerate(body.endpoints):
            prefix = f"endpoints[{index}].action"
            nodes = validate_action(
                endpoint.action,
                declared_variables=declared,
                known_secrets=known_secrets,
                prefix=prefix,
            )
            ensure_author_may_save(author, nodes, prefix)
            rows.append(
                Endpoint(
                    service_id=0,
                    readable_id=endpoint.readable_id,
                    name=endpoint.name,
                    description=endpoint.description,
                    methods=list(endpoint.methods),
                    enable_log=endpoint.enable_log,
                    action=dump_action(nodes),
                )
            )
        return rows

    async def _bound_secrets(self, slug: str, readable_ids: set[str] | None = None) -> list[str]:
        """Secrets whose `refresh_endpoint` points into this service (or at these endpoints)."""
        query = select(col(Secret.name), col(Secret.refresh_endpoint)).where(
            col(Secret.refresh_endpoint).startswith(f"{slug}/", autoescape=True)
        )
        names = []
        for name, bound in (await self.session.execute(query)).all():
            if readable_ids is None or (bound or "").partition("/")[2] in readable_ids:
                names.append(name)
        return sorted(names)

    async def _flush_new_slug(self, slug: str) -> None:
        """Flush a new service row; a concurrent create of the same slug is a 409, not a 500."""
        try:
            await self.session.flush()
        except IntegrityError:
            raise AlreadyExists(f"service {slug!r} already exists") from None

    async def create(self, data: ServiceCreate, author: Actor) -> Service:
        """A new service with its endpoints, saved by `author`."""
        query = select(col(Service.id)).where(col(Service.slug) == data.slug)
        if (await self.session.execute(query)).first():
            raise AlreadyExists(
                f"service {data.slug!r} already exists; PUT /v1/services/{data.slug} replaces it"
            )
        rows = await self._validated_endpoints(data, author)
        service = Service(
            slug=data.slug,
            name=data.name,
            description=data.description,
            variables=[v.model_dump(mode="json") for v in data.variables],
        )
        self.session.add(service)
        await self._flush_new_slug(data.slug)
        for row in rows:
            row.service_id = service.id  # type: ignore[assignment]
            self.session.add(row)
        await self.session.flush()
        return service

    async def replace(self, service: Service, data: ServiceBody, author: Actor) -> Service:
        """Replace a service's fields and its whole endpoint list, saved by `author`."""
        rows = await self._validated_endpoints(data, author)
        current = {e.readable_id for e in await self.endpoints(service)}
        removed = current - {r.readable_id for r in rows}
        bound = await self._bound_secrets(service.slug, removed) if removed else []
        if bound:
            raise Conflict(
                f"secrets {', '.join(bound)} refresh through endpoints this change removes; "
                "PATCH their refresh_endpoint first"
            )
        service.name = data.name
        service.description = data.description
        service.variables = [v.model_dump(mode="json") for v in data.variables]
        service.updated_at = utcnow()
        await self.session.execute(delete(Endpoint).where(col(Endpoint.service_id) == service.id))
        for row in rows:
            row.service_id = service.id  # type: ignore[assignment]
            self.session.add(row)
        await self.session.flush()
        return service

    async def delete(self, service: Service) -> None:
        """Delete a service and its endpoints, unless a secret still refreshes through it."""
        bound = await self._bound_secrets(service.slug)
        if bound:
            raise Conflict(
                f"secrets {', '.join(bound)} refresh through this service; "
                "PATCH their refresh_endpoint first"
            )
        await self.session.delete(service)
        await self.session.flush()
