"""Fine-tuning jobs as the API creates and cancels them."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from loraq import estimate, lifecycle, repository
from loraq.base_models import resolve_base_model
from loraq.errors import Conflict, InvalidRequest, NotFound
from loraq.files import DATASET_PURPOSE
from loraq.lifecycle import JobStatus
from loraq.models import File, Job, Project
from loraq.projects import check_can_queue
from loraq.queue import publish_after_commit
from loraq.settings import Settings
from loraq.spec import JobCreate, resolve_hyperparameters
from loraq.storage import ArtifactStore


def create_job(session: Session, *, project_id: str, request: JobCreate, settings: Settings) -> Job:
    """Check the spec against the server's models and the project's files, store it, queue it."""
    resolve_base_model(request.model, settings)
    check_can_queue(session, project_id=project_id, settings=settings)
    training = _dataset_file(session, project_id, request.training_file, param="training_file")
    if request.validation_file is not None:
        validation = _dataset_file(session, project_id, request.validation_file, param="validation_file")
        if validation.format != training.format:
            raise InvalidRequest(
                f"validation_file is {validation.format} but training_file is {training.format}",
                param="validation_file",
            )
    assert request.method is not None
    resolved = resolve_hyperparameters(request.requested_hyperparameters, n_examples=training.examples or 0)
    seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
    job = Job(
        project_id=project_id,
        model=request.model,
        training_file=training.id,
        validation_file=request.validation_file,
        suffix=request.suffix,
        seed=seed,
        metadata_=request.metadata,
        method=request.method.model_dump(mode="json"),
        hyperparameters=resolved.model_dump(mode="json"),
        adapter=request.adapter.model_dump(mode="json"),
        export=request.export.model_dump(mode="json"),
        # The files were validated at upload, so the job is ready for a worker at once.
        status=JobStatus.QUEUED.value,
        result_files=[],
    )
    session.add(job)
    session.flush()
    lifecycle.add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    lifecycle.add_event(session, job.id, "Validated training file: " + training.id)
    lifecycle.add_event(session, job.id, "Fine-tuning job queued")
    publish_after_commit(session, job.id)
    return job


def estimate_job(
    session: Session, *, project_id: str, request: JobCreate, settings: Settings, store: ArtifactStore
) -> dict[str, Any]:
    """What a job would cost, without queueing it: tokens, sequences, steps and peak memory."""
    base = resolve_base_model(request.model, settings)
    if base.path is None:
        raise InvalidRequest(
            "estimates need the base model on this server's disk, not a hub id", param="model"
        )
    training = _dataset_file(session, project_id, request.training_file, param="training_file")
    with tempfile.TemporaryDirectory(prefix="loraq-estimate-") as scratch:
        train_path = Path(scratch) / "train.jsonl"
        store.download(training.storage_key, train_path)
        return estimate.estimate_job(
            request=request,
            train_path=train_path,
            dataset_format=training.format or "chat",
            model_dir=base.path,
        )


def cancel_job(session: Session, *, project_id: str, job_id: str) -> Job:
    """Queued: cancelled now. Running: cancelled now, and its worker stops at the next step."""
    job = repository.get_job(session, project_id=project_id, job_id=job_id)
    if not lifecycle.cancel(session, job.id):
        raise Conflict(
            f"job {job_id} is {job.status}; only an unfinished job can be cancelled",
            param="fine_tuning_job_id",
        )
    session.refresh(job)
    return job


def _dataset_file(session: Session, project_id: str, file_id: str, *, param: str) -> File:
    try:
        file = repository.get_file(session, project_id=project_id, file_id=file_id, param=param)
    except NotFound as missing:
        # The route exists; what is wrong is a field of the body, so this is a 400 naming it.
        raise InvalidRequest(
            f"{param}: no such file: {file_id}", param=param, code="file_not_found"
        ) from missing
    if file.purpose != DATASET_PURPOSE:
        raise InvalidRequest(
            f"{param} {file_id} is not a fine-tune dataset (purpose {file.purpose})", param=param
        )
    return file


def fine_tuned_model_name(session: Session, job_id: str) -> str:
    """OpenAI's naming: ft:<base>:<project>:<suffix>:<job id>."""
    job = session.scalars(select(Job).where(Job.id == job_id)).one()
    project = session.scalars(select(Project).where(Project.id == job.project_id)).one()
    return f"ft:{job.model}:{project.name}:{job.suffix or ''}:{job.id}"
