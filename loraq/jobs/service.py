"""Fine-tuning jobs as the API creates and cancels them."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from loraq.base_models.catalog import BaseLLM, resolve_base_model
from loraq.core.broker import publish_after_commit
from loraq.core.errors import Conflict, InvalidRequest, NotFound
from loraq.core.settings import Settings
from loraq.files import repository as files_repository
from loraq.files.service import DATASET_PURPOSE
from loraq.files.tables import File
from loraq.jobs import estimate, estimate_pool, repository, runs
from loraq.jobs.checks import check_something_to_train_on, check_targets_exist, continued_adapter
from loraq.jobs.events import add_event
from loraq.jobs.spec import AdapterSpec, JobCreate, held_out_count
from loraq.jobs.states import JobStatus
from loraq.jobs.tables import Job
from loraq.projects.idempotency import fingerprint
from loraq.projects.service import check_can_queue, get_project
from loraq.storage.scratch import scratch_dir
from loraq.storage.stores import ArtifactStore
from loraq.workers import service as workers_service

# How long a create may spend looking for an example with something to train on (a good file: one example).
CREATE_CHECK_SECONDS = 2.0


def create_job(
    session: Session, *, project_id: str, request: JobCreate, settings: Settings, store: ArtifactStore
) -> Job:
    """Check the spec against the server's models and the project's files, store it, queue it.

    What would only fail in the worker minutes later is refused here, naming the field to change.
    """
    base, adapter, parent = resolve_model(session, project_id=project_id, request=request, settings=settings)
    check_targets_exist(adapter, base)
    training = _dataset_file(session, project_id, request.training_file, param="training_file")
    if request.validation_file is not None:
        validation = _dataset_file(session, project_id, request.validation_file, param="validation_file")
        if validation.format != training.format:
            raise InvalidRequest(
                f"validation_file is {validation.format} but training_file is {training.format}",
                param="validation_file",
            )
    assert request.method is not None
    requested = request.requested_hyperparameters
    examples = training.examples or 0
    if requested.validation_split is not None and held_out_count(examples, requested.validation_split) == 0:
        raise InvalidRequest(
            f"validation_split needs at least 2 training examples; {request.training_file} has {examples}",
            param=request.hyperparameter_param("validation_split"),
        )
    resolved = requested.resolve(n_examples=examples)
    seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
    check_something_to_train_on(request, base, training, resolved, seed=seed, store=store)
    check_can_queue(session, project_id=project_id, settings=settings)  # takes the project's lock: last
    job = Job(
        project_id=project_id,
        model=request.model,
        base_model=base.name,
        parent_job_id=parent.id if parent else None,
        training_file=training.id,
        validation_file=request.validation_file,
        suffix=request.suffix,
        seed=seed,
        metadata_=request.metadata,
        method=request.method.model_dump(mode="json"),
        hyperparameters=resolved.model_dump(mode="json"),
        adapter=adapter.model_dump(mode="json"),
        export=request.export.model_dump(mode="json"),
        samples=[sample.model_dump(mode="json", exclude_none=True) for sample in request.samples]
        if request.samples is not None
        else None,
        sample_max_new_tokens=request.sample_max_new_tokens,
        # The files were validated at upload, so the job is ready for a worker at once.
        status=JobStatus.QUEUED.value,
        result_files=[],
    )
    repository.add_job(session, job)
    add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    add_event(session, job.id, "Validated training file: " + training.id)
    add_event(session, job.id, "Fine-tuning job queued")
    publish_after_commit(session, job.id)
    return job


def estimate_job(
    session: Session, *, project_id: str, request: JobCreate, settings: Settings, store: ArtifactStore
) -> dict[str, Any]:
    """What a job would cost, without queueing it: tokens, sequences, steps and peak memory."""
    base, adapter, _parent = resolve_model(session, project_id=project_id, request=request, settings=settings)
    check_targets_exist(adapter, base)
    request = request.model_copy(update={"adapter": adapter})
    if base.path is None:
        raise InvalidRequest(
            "estimates need the base model on this server's disk, not a hub id", param="model"
        )
    training = _dataset_file(session, project_id, request.training_file, param="training_file")
    validation = None
    if request.validation_file is not None:
        validation = _dataset_file(session, project_id, request.validation_file, param="validation_file")
    device, auto_compute_dtype = _assumed_device(session, settings)
    validation_examples = validation.examples if validation else None
    # The file's content, the model and every field of the spec the numbers depend on.
    spec = request.model_dump_json(exclude={"training_file", "validation_file", "suffix", "metadata"})
    key = fingerprint(training.sha256, str(base.path), spec, device, auto_compute_dtype, validation_examples)
    if (answer := estimate_pool.cached(key)) is not None:
        return answer
    storage_key, dataset_format, examples = training.storage_key, training.format or "chat", training.examples
    # Nothing to write: the connection goes back to the pool before a download and tokenizing that may take
    # seconds (the request holds none of the API's slots then either: api/app.py).
    session.rollback()
    with scratch_dir(settings.scratch_dir, "estimate") as scratch:
        # A local store's blob is read where it is; another store's is downloaded once.
        train_path = store.local_path(storage_key)
        if train_path is None:
            train_path = scratch / "train.jsonl"
            store.download(storage_key, train_path)
        job = estimate_pool.EstimateInput(
            request=request,
            train_path=train_path,
            dataset_format=dataset_format,
            model_dir=base.path,
            device=device,
            auto_compute_dtype=auto_compute_dtype,
            validation_file_examples=validation_examples,
            examples=examples,
        )
        return estimate_pool.run_estimate(key, job)


def _assumed_device(session: Session, settings: Settings) -> tuple[str, str]:
    """What a job would train on: the live workers' device (the first one's, if they differ).

    With no live worker, the estimate assumes a GPU with bfloat16, the production case, and says so.
    """
    workers = workers_service.live_workers(session, settings=settings)
    if not workers:
        return estimate.GPU_ASSUMED, "bfloat16"
    return workers[0].device, workers[0].compute_dtype


class JobState(Protocol):
    """What status_details reads of a job: a Job, or its row (repository.read_job)."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def lease_expires_at(self) -> float | None: ...


def status_details(session: Session, jobs: Sequence[JobState], *, settings: Settings) -> dict[str, str]:
    """Why each stalled job is not moving, by job id: nobody alive to run it, or to resume it.

    Only the API can say so: with every worker dead, no worker is left to write an event.
    """
    now = time.time()
    queued = [job for job in jobs if job.status == JobStatus.QUEUED]
    orphaned = [
        job
        for job in jobs
        if job.status == JobStatus.RUNNING and job.lease_expires_at is not None and job.lease_expires_at < now
    ]
    if not (queued or orphaned):
        return {}
    alive = bool(workers_service.live_workers(session, settings=settings))
    details = {} if alive else {job.id: "waiting for a worker: no worker is alive" for job in queued}
    for job in orphaned:
        assert job.lease_expires_at is not None
        since = datetime.fromtimestamp(job.lease_expires_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        details[job.id] = f"its worker stopped answering (lease expired {since}); " + (
            "another worker resumes it from its last checkpoint"
            if alive
            else "no worker is alive to resume it: it resumes from its last checkpoint when one starts"
        )
    return details


def cancel_job(session: Session, *, project_id: str, job_id: str) -> Job:
    """Queued: cancelled now. Running: cancelled now, and its worker stops at the next step."""
    job = repository.get_job(session, project_id=project_id, job_id=job_id)
    if not runs.cancel(session, job.id):
        raise Conflict(
            f"job {job_id} is {job.status}; only an unfinished job can be cancelled",
            param="fine_tuning_job_id",
        )
    session.refresh(job)
    return job


def resolve_model(
    session: Session, *, project_id: str, request: JobCreate, settings: Settings
) -> tuple[BaseLLM, AdapterSpec, Job | None]:
    """The base LLM a job trains on, its adapter, and the job it continues, if any.

    A base model trains a new adapter. An ft: model of the caller's project (OpenAI lets a fine-tuned
    model be fine-tuned) trains further from its adapter, on its base, keeping its adapter's shape.
    """
    if not request.model.startswith("ft:"):
        return resolve_base_model(request.model, settings), request.adapter, None
    parent = repository.get_fine_tuned(session, project_id=project_id, name=request.model)
    if parent is None:
        raise InvalidRequest(
            f"model {request.model!r} is not a fine-tuned model of this project; GET /v1/models lists them",
            param="model",
            code="model_not_found",
        )
    try:
        files_repository.get_file(session, project_id=project_id, file_id=parent.result_files[0])
    except (NotFound, IndexError) as missing:
        raise InvalidRequest(
            f"model: the adapter of {request.model} (a result file of {parent.id}) was deleted",
            param="model",
            code="model_not_found",
        ) from missing
    parent_adapter = AdapterSpec.model_validate(parent.adapter)
    given = request.adapter if "adapter" in request.model_fields_set else None
    adapter = continued_adapter(given, parent_adapter, model=request.model)
    return resolve_base_model(parent.base_model, settings), adapter, parent


def _dataset_file(session: Session, project_id: str, file_id: str, *, param: str) -> File:
    try:
        file = files_repository.get_file(session, project_id=project_id, file_id=file_id, param=param)
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


def fine_tuned_model_name(session: Session, job: Job) -> str:
    """OpenAI's naming: ft:<base>:<project>:<suffix>:<job id>; the base LLM's name, even when continued."""
    project = get_project(session, job.project_id)
    return f"ft:{job.base_model}:{project.name}:{job.suffix or ''}:{job.id}"
