"""Every table, imported in one place so Alembic and tests see the whole schema."""

from sqlmodel import SQLModel

from app.auth.models import User
from app.runs.models import Run, RunSecret
from app.secrets.models import Secret, SecretValue, SecretVersion
from app.services.models import Endpoint, Service

metadata = SQLModel.metadata

__all__ = [
    "Endpoint",
    "Run",
    "RunSecret",
    "Secret",
    "SecretValue",
    "SecretVersion",
    "Service",
    "User",
    "metadata",
]
