"""What the server returns, in OpenAI's object shapes (plus loraq's `adapter` and `progress`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from loraq.models import ApiKey, Checkpoint, File, Job, JobEvent, Project
from loraq.repository import Page

Item = TypeVar("Item", bound=BaseModel)


class ListPublic(BaseModel, Generic[Item]):
    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def list_of(page: Page[Any] | Sequence[Any], to_public: Callable[[Any], Item]) -> ListPublic[Item]:
    items, has_more = (page.items, page.has_more) if isinstance(page, Page) else (page, False)
    data = [to_public(item) for item in items]
    return ListPublic[Item](
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,  # type: ignore[attr-defined]
        last_id=data[-1].id if data else None,  # type: ignore[attr-defined]
    )


class FilePublic(BaseModel):
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

    @classmethod
    def of(cls, file: File) -> FilePublic:
        return cls(
            id=file.id,
            bytes=file.bytes,
            created_at=file.created_at,
            filename=file.filename,
            purpose=file.purpose,
            status=file.status,
            format=file.format,
            examples=file.examples,
            sha256=file.sha256,
        )


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str
    model: str
    status: str
    created_at: int
    finished_at: int | None
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    adapter: dict[str, Any]
    export: dict[str, Any] | None
    result_files: list[str]
    fine_tuned_model: str | None
    trained_tokens: int | None
    seed: int
    suffix: str | None
    metadata: dict[str, str] | None
    error: JobError | None
    progress: dict[str, Any] | None
    estimated_finish: int | None = None
    integrations: list[Any] = []

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls(
            id=job.id,
            organization_id=job.project_id,
            model=job.model,
            status=job.status,
            created_at=job.created_at,
            finished_at=job.finished_at,
            training_file=job.training_file,
            validation_file=job.validation_file,
            hyperparameters=job.hyperparameters,
            method=job.method,
            adapter=job.adapter,
            export=job.export,
            result_files=list(job.result_files or []),
            fine_tuned_model=job.fine_tuned_model,
            trained_tokens=job.trained_tokens,
            seed=job.seed,
            suffix=job.suffix,
            metadata=job.metadata_,
            error=JobError(**job.error) if job.error else None,
            progress=job.progress,
        )


class EventPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str  # "message" or "metrics"
    data: dict[str, Any] | None

    @classmethod
    def of(cls, event: JobEvent) -> EventPublic:
        return cls(
            id=event.id,
            created_at=event.created_at,
            level=event.level,
            message=event.message,
            type=event.type,
            data=event.data,
        )


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    step_number: int
    metrics: dict[str, Any]
    fine_tuning_job_id: str
    fine_tuned_model_checkpoint: str
    result_file: str | None  # loraq: this checkpoint's adapter bundle, at /v1/files/{id}/content

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> CheckpointPublic:
        return cls(
            id=checkpoint.id,
            created_at=checkpoint.created_at,
            step_number=checkpoint.step_number,
            metrics=checkpoint.metrics,
            fine_tuning_job_id=checkpoint.job_id,
            fine_tuned_model_checkpoint=f"{checkpoint.job_id}:ckpt-step-{checkpoint.step_number}",
            result_file=checkpoint.result_file,
        )


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: Literal["base", "adapter"]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]
    max_running_jobs: Annotated[int, Field(ge=1, le=10_000)] | None = None
    max_queued_jobs: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    max_storage_bytes: Annotated[int, Field(ge=1, le=1 << 50)] | None = None


class ProjectPublic(BaseModel):
    id: str
    object: Literal["organization.project"] = "organization.project"
    name: str
    created_at: int
    max_running_jobs: int | None
    max_queued_jobs: int | None
    max_storage_bytes: int | None

    @classmethod
    def of(cls, project: Project) -> ProjectPublic:
        return cls(
            id=project.id,
            name=project.name,
            created_at=project.created_at,
            max_running_jobs=project.max_running_jobs,
            max_queued_jobs=project.max_queued_jobs,
            max_storage_bytes=project.max_storage_bytes,
        )


class ApiKeyPublic(BaseModel):
    id: str
    object: Literal["organization.project.api_key"] = "organization.project.api_key"
    project_id: str
    redacted_value: str
    created_at: int
    revoked_at: int | None
    is_admin: bool

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyPublic:
        return cls(
            id=key.id,
            project_id=key.project_id,
            redacted_value=key.display_prefix + "…",
            created_at=key.created_at,
            revoked_at=key.revoked_at,
            is_admin=key.is_admin,
        )


class ApiKeyCreated(ApiKeyPublic):
    value: str  # the secret, shown this once and never stored
