"""Every table, imported in one place so Alembic and tests see the whole schema."""

from sqlmodel import SQLModel

from app.auth.models import ApiKey, Role, ServiceAccount, ServiceAccountRole, User, UserRole
from app.connect.models import ConnectLink, ConnectState
from app.notifications.models import Webhook
from app.providers.models import Provider
from app.runs.models import Run, RunSecret
from app.schedules.models import Schedule
from app.secrets.models import Secret, SecretValue, SecretVersion
from app.services.models import Endpoint, Service

metadata = SQLModel.metadata

__all__ = [
    "ApiKey",
    "ConnectLink",
    "ConnectState",
    "Endpoint",
    "Provider",
    "Role",
    "Run",
    "RunSecret",
    "Schedule",
    "Secret",
    "SecretValue",
    "SecretVersion",
    "Service",
    "ServiceAccount",
    "ServiceAccountRole",
    "User",
    "UserRole",
    "Webhook",
    "metadata",
]
