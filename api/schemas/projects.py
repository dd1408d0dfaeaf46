"""Projects and API keys on the wire (admin only)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import PublicModel


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # The name is part of every fine-tuned model id (ft:<base>:<project>:<suffix>:<job>): no ":", no
    # spaces or newlines, so such an id always splits back into its parts.
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    max_running_jobs: Annotated[int, Field(ge=1, le=10_000)] | None = None
    max_queued_jobs: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    max_storage_bytes: Annotated[int, Field(ge=1, le=1 << 50)] | None = None


class ProjectPublic(PublicModel):
    id: str
    object: Literal["organization.project"] = "organization.project"
    name: str
    created_at: int
    max_running_jobs: int | None
    max_queued_jobs: int | None
    max_storage_bytes: int | None


class ApiKeyPublic(PublicModel):
    id: str
    object: Literal["organization.project.api_key"] = "organization.project.api_key"
    project_id: str
    redacted_value: str
    created_at: int
    revoked_at: int | None
    is_admin: bool


class ApiKeyCreated(ApiKeyPublic):
    value: str  # the secret, shown this once and never stored
