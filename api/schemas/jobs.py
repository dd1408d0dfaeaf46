"""Fine-tuning jobs on the wire: OpenAI's job, event and checkpoint objects, plus loraq's spec fields."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import PublicModel
from loraq.jobs.spec import AdapterSpec, ExportSpec, Method, ResolvedHyperparameters


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobPublic(PublicModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str = Field(validation_alias="project_id")
    model: str
    status: str
    # loraq: why the job is not moving, when nothing can move it (no live worker to run or resume it).
    status_details: str | None = None
    created_at: int
    finished_at: int | None
    training_file: str
    validation_file: str | None
    hyperparameters: ResolvedHyperparameters
    method: Method
    adapter: AdapterSpec
    export: ExportSpec | None
    result_files: list[str]
    fine_tuned_model: str | None
    trained_tokens: int | None
    seed: int
    suffix: str | None
    metadata: dict[str, str] | None = Field(validation_alias="metadata_")
    error: JobError | None
    progress: dict[str, Any] | None
    estimated_finish: int | None = None
    integrations: list[Any] = []


class EventPublic(PublicModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str  # "message" or "metrics"
    data: dict[str, Any] | None


class CheckpointPublic(PublicModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    step_number: int
    metrics: dict[str, Any]
    fine_tuning_job_id: str = Field(validation_alias="job_id")
    fine_tuned_model_checkpoint: str
    result_file: str | None  # loraq: this checkpoint's adapter bundle, at /v1/files/{id}/content
