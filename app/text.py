"""Text fields every database can store: PostgreSQL refuses the NUL character in text."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field


def no_nul(text: str) -> str:
    """Refuse NUL with a message that says so, instead of failing later in the database."""
    if "\x00" in text:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return text


Description = Annotated[str, Field(max_length=1000), AfterValidator(no_nul)]
DisplayName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(no_nul)]
