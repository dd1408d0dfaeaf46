"""Fine-tuning jobs on the wire: OpenAI's job, event and checkpoint objects, plus loraq's spec fields."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from api.schemas.common import PublicModel
from loraq.jobs.spec import AdapterSpec, ExportSpec, Method, ResolvedHyperparameters
from loraq.jobs.states import JobStatus


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobEvaluation(BaseModel):
    """The base model's valid loss beside the tuned adapter's: the verdict on the adapter."""

    base_valid_loss: float | None = None
    valid_loss: float | None = None  # the latest evaluation's: the exported adapter's once the job ended
    best_valid_loss: float | None = None
    best_step: int | None = None
    improvement: float | None = None  # (base_valid_loss - valid_loss) / base_valid_loss


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
    evaluation: JobEvaluation | None = None  # loraq: None without validation data
    samples: list[dict[str, Any]] | None = None  # loraq: the sample inputs asked for at create
    sample_max_new_tokens: int = 64
    integrations: list[Any] = []

    @computed_field  # type: ignore[prop-decorator]
    @property
    def estimated_finish(self) -> int | None:
        """When a running job should finish, by its latest progress report (OpenAI's field)."""
        progress = self.progress or {}
        eta, reported_at = progress.get("eta_seconds"), progress.get("reported_at")
        if self.status != JobStatus.RUNNING or eta is None or reported_at is None:
            return None
        return int(reported_at + eta)


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


class SamplePublic(PublicModel):
    id: str
    object: Literal["fine_tuning.job.sample"] = "fine_tuning.job.sample"
    created_at: int
    step: int  # the training step of the tuned adapter that gave `output`
    index: int
    input: list[dict[str, Any]] | str  # a messages list, or a prompt
    reference: str | None
    base_output: str
    output: str
