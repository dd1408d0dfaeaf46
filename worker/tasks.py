"""The Celery task: run one fine-tuning job under a lease, from claim to result."""

from __future__ import annotations

import logging
import os
import socket
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from loraq import files, lifecycle, repository
from loraq.base_models import resolve_base_model
from loraq.db import get_engine, session_scope
from loraq.jobs import fine_tuned_model_name
from loraq.lifecycle import Lease
from loraq.models import Checkpoint, Job
from loraq.queue import RUN_JOB_TASK
from loraq.settings import get_settings
from loraq.spec import AdapterSpec, ResolvedHyperparameters
from loraq.storage import ArtifactStore, get_store
from worker.celery_app import app
from worker.heartbeat import Heartbeat

if TYPE_CHECKING:
    from worker.reporting import JobReporter
    from worker.training import TrainingOutcome

log = logging.getLogger(__name__)
settings = get_settings()


@dataclass(frozen=True)
class JobSnapshot:
    """What the worker needs of a job, read once under its lease."""

    id: str
    project_id: str
    model: str
    seed: int
    hyperparameters: ResolvedHyperparameters
    adapter: AdapterSpec
    dataset_format: str
    training_key: str
    validation_key: str | None
    checkpoint: tuple[int, str] | None  # (step, storage key) of the newest checkpoint
    attempt: int
    merged_export: bool


@app.task(
    name=RUN_JOB_TASK,
    # Past the job's maximum runtime, the soft limit raises inside training and the job fails;
    # the hard limit kills a child that did not stop.
    soft_time_limit=settings.max_job_runtime_seconds,
    time_limit=settings.max_job_runtime_seconds + 120,
)
def run_job(job_id: str) -> str:
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _wait_for_database()
    with session_scope() as session:
        lease = lifecycle.claim(
            session,
            job_id,
            owner=owner,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_job_attempts,
            default_running_limit=settings.default_max_running_jobs,
        )
        if lease is None:
            return "not claimable: finished, cancelled, or leased by a live worker"
        snapshot = _snapshot(session, job_id)
        started = (
            "Fine-tuning job started"
            if snapshot.attempt == 1
            else (f"Fine-tuning job restarted (attempt {snapshot.attempt})")
        )
        lifecycle.add_event(session, job_id, started)
    # Imported here, in the child that runs the job, so the parent process never starts torch's
    # thread pools before forking (a forked copy of a live OpenMP pool can hang).
    from worker.reporting import JobReporter
    from worker.training import TrainingStopped

    store = get_store()
    with Heartbeat(
        lease, interval=settings.heartbeat_seconds, lease_seconds=settings.lease_seconds
    ) as heartbeat:
        try:
            with tempfile.TemporaryDirectory(prefix=f"loraq-{job_id}-") as scratch:
                outcome = _train(
                    snapshot,
                    Path(scratch),
                    store,
                    JobReporter(lease, heartbeat, store, project_id=snapshot.project_id),
                )
                _publish_result(snapshot, lease, outcome, store)
        except TrainingStopped:
            log.info("job %s stopped: cancelled or its lease was taken", job_id)
            return "stopped"
        except Exception as error:
            log.exception("job %s failed", job_id)
            with session_scope() as session:
                lifecycle.fail(session, job_id, _readable(error), code="training_error", lease=lease)
            return "failed"
    return "succeeded"


def _wait_for_database() -> None:
    """Hold this worker's only slot until the database answers, so it takes no job it cannot record.

    The message is kept meanwhile (late ack); jobs published during the outage are found again by
    the reconciler, so nothing is lost however long the outage lasts.
    """
    delay = 1.0
    while True:
        try:
            with get_engine().connect() as connection:
                connection.execute(text("SELECT 1"))
            return
        except OperationalError:
            log.warning(
                "database unreachable; this worker takes no job until it answers (retry in %.0fs)", delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def _snapshot(session: Session, job_id: str) -> JobSnapshot:
    job = session.scalars(select(Job).where(Job.id == job_id)).one()
    training = repository.get_file(session, project_id=job.project_id, file_id=job.training_file)
    validation = (
        repository.get_file(session, project_id=job.project_id, file_id=job.validation_file)
        if job.validation_file
        else None
    )
    newest = session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step_number.desc()).limit(1)
    ).first()
    return JobSnapshot(
        id=job.id,
        project_id=job.project_id,
        model=job.model,
        seed=job.seed,
        hyperparameters=ResolvedHyperparameters.model_validate(job.hyperparameters),
        adapter=AdapterSpec.model_validate(job.adapter),
        dataset_format=training.format or "chat",
        training_key=training.storage_key,
        validation_key=validation.storage_key if validation else None,
        checkpoint=(newest.step_number, newest.storage_key) if newest else None,
        attempt=job.attempts,
        merged_export=bool((job.export or {}).get("merged")),
    )


def _train(job: JobSnapshot, scratch: Path, store: ArtifactStore, reporter: JobReporter) -> TrainingOutcome:
    """Fetch the inputs into scratch space and run the training script."""
    from worker.training import TrainingRequest, train_adapter

    base = resolve_base_model(job.model, settings)
    train_path = scratch / "train.jsonl"
    store.download(job.training_key, train_path)
    validation_path = None
    if job.validation_key is not None:
        validation_path = scratch / "validation.jsonl"
        store.download(job.validation_key, validation_path)
    resume_from = None
    if job.checkpoint is not None:
        step, key = job.checkpoint
        resume_from = _unpack_checkpoint(store, key, scratch / "resume" / f"checkpoint-{step}")
        reporter_note = f"Resuming from the checkpoint at step {step}"
        with session_scope() as session:
            lifecycle.add_event(session, job.id, reporter_note, data={"resumed_from_step": step})
    request = TrainingRequest(
        base_model_path=base.path or Path(base.name),
        base_model_name=base.name,
        train_path=train_path,
        dataset_format=job.dataset_format,
        validation_path=validation_path,
        output_dir=scratch / "output",
        hyperparameters=job.hyperparameters,
        adapter=job.adapter,
        seed=job.seed,
        resume_from=resume_from,
        merged=job.merged_export,
    )
    return train_adapter(request, reporter)


def _unpack_checkpoint(store: ArtifactStore, key: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = dest.parent / "checkpoint.tar.gz"
    store.download(key, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")  # "data" refuses links and paths outside dest
    return dest


def _publish_result(job: JobSnapshot, lease: Lease, outcome: TrainingOutcome, store: ArtifactStore) -> None:
    """Store the result bundles and mark the job succeeded, in one transaction, only if still ours."""
    from worker.training import TrainingStopped
    from worker.training.export import pack_bundle

    outputs = {"adapter": outcome.bundle_dir, "merged": outcome.merged_dir}
    bundles = []
    for kind, directory in outputs.items():
        if directory is not None:
            bundles.append(pack_bundle(directory, directory.parent / f"{job.id}-{kind}.tar.gz"))
    with session_scope() as session:
        results = [
            files.create_result_file(
                session, project_id=job.project_id, filename=bundle.name, source=bundle, store=store
            )
            for bundle in bundles
        ]
        won = lifecycle.succeed(
            session,
            lease,
            result_files=[result.id for result in results],
            fine_tuned_model=fine_tuned_model_name(session, job.id),
            trained_tokens=outcome.trained_tokens,
        )
        if not won:
            # Cancelled or taken over while exporting: roll back, which also deletes the blobs.
            raise TrainingStopped("the job stopped being ours before its result was recorded")


def _readable(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:1000] if text else type(error).__name__
