"""Pieces every domain's request models share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown fields are refused, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")
