"""The API's objects as the client reads them: typed where the client relies on a field, open to the rest.

Every model allows extra fields, so a newer server's additions reach the caller (`model_extra`) instead
of breaking an older client.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FileObject(_Open):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str | None = None
    format: str | None = None
    examples: int | None = None
    sha256: str | None = None


class JobError(_Open):
    code: str | None = None
    message: str = ""
    param: str | None = None


class Progress(_Open):
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    reported_at: float | None = None


class Evaluation(_Open):
    base_valid_loss: float | None = None
    valid_loss: float | None = None
    best_valid_loss: float | None = None
    best_step: int | None = None
    improvement: float | None = None  # a fraction: 0.35 is a loss 35% below the base model's


class Job(_Open):
    id: str
    model: str
    status: str
    created_at: int
    finished_at: int | None = None
    training_file: str
    validation_file: str | None = None
    result_files: list[str] = []
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: JobError | None = None
    progress: Progress | None = None
    evaluation: Evaluation | None = None
    status_details: str | None = None
    metadata: dict[str, str] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobEvent(_Open):
    id: str
    created_at: int
    level: str
    message: str
    type: str = "message"
    data: dict[str, Any] | None = None


class Checkpoint(_Open):
    id: str
    created_at: int
    step_number: int
    metrics: dict[str, Any] = {}
    fine_tuned_model_checkpoint: str | None = None
    result_file: str | None = None


class Model(_Open):
    id: str
    created: int
    owned_by: str
    kind: str | None = None


class Sample(_Open):
    step: int
    index: int
    input: Any = None
    reference: str | None = None
    base_output: str | None = None
    output: str | None = None


Item = TypeVar("Item", bound=BaseModel)


class Page(_Open, Generic[Item]):
    data: list[Item]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
