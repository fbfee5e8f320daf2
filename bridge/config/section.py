"""The base of every settings section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Frozen, and strict about unknown keys: a misspelt setting is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)
