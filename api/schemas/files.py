"""Files on the wire: OpenAI's File object, plus loraq's dataset facts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from api.schemas.common import PublicModel


class FilePublic(PublicModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    format: str | None = None
    examples: int | None = None
    sha256: str


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
