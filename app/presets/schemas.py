"""Request and response models of the presets API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PresetName = Literal[
    "oauth2_refresh_token",
    "oauth2_client_credentials",
    "oauth2_jwt_bearer",
    "entra_id_client_credentials",
]

REFRESHER_EXAMPLE: dict[str, Any] = {
    "preset": "oauth2_refresh_token",
    "params": {
        "token_url": "https://auth.example.com/oauth/token",
        "client_id_secret": "CLIENT_ID",
        "client_secret_secret": "CLIENT_SECRET",
        "refresh_token_secret": "REFRESH_TOKEN",
    },
}


class PresetRead(BaseModel):
    """A preset: what it does and the JSON schema of its params."""

    name: str = Field(examples=["oauth2_refresh_token"])
    description: str
    params_schema: dict[str, Any] = Field(description="JSON schema of the preset's `params`.")


class RefresherRequest(BaseModel):
    """Which preset refreshes the secret, and its params (names of secrets, never values)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [REFRESHER_EXAMPLE]})

    preset: PresetName
    params: dict[str, Any] = Field(
        default_factory=dict, description="As the preset's `params_schema` (GET /v1/presets)."
    )


class RefresherRead(BaseModel):
    """The secret's new refresher: where its action lives and the action itself (editable)."""

    secret: str
    preset: str
    service: str = Field(description="The slug of the service holding the endpoint.")
    endpoint: str = Field(description="The endpoint's readable_id.")
    refresh_endpoint: str = Field(description="`SERVICE/ENDPOINT`, now bound to the secret.")
    params: dict[str, Any] = Field(description="The params as understood, defaults filled in.")
    action: list[dict[str, Any]]
