"""The Celery task: run one fine-tuning job under a lease, from claim to result."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from loraq.base_models.catalog import resolve_base_model
from loraq.core.broker import RUN_JOB_TASK
from loraq.core.db import get_engine, session_scope
from loraq.core.errors import LoraqError
from loraq.core.logs import job_logging
from loraq.core.repository import ping
from loraq.core.settings import get_settings
from loraq.files import repository as files_repository
from loraq.files import service as files_service
from loraq.jobs import repository as jobs_repository
from loraq.jobs import runs
from loraq.jobs.events import add_event
from loraq.jobs.service import fine_tuned_model_name
from loraq.jobs.spec import AdapterSpec, ResolvedHyperparameters
from loraq.jobs.states import Lease
from loraq.jobs.tables import Job
from loraq.storage.archives import pack_dir, unpack
from loraq.storage.scratch import scratch_dir
from loraq.storage.stores import ArtifactStore, get_store
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
    base_model: str  # the base LLM, also when the job continues an ft: model
    seed: int
    hyperparameters: ResolvedHyperparameters
    adapter: AdapterSpec
    dataset_format: str
    training_key: str
    validation_key: str | None
    checkpoint: tuple[int, str] | None  # (step, storage key) of the newest checkpoint
    continues: tuple[str, str] | None  # (ft: model, storage key of its adapter bundle), when training further
    attempt: int
    merged_export: bool
    samples: list[dict[str, Any]] | None  # the spec's sample inputs; None: the first validation examples
    sample_max_new_tokens: int
    evaluation: dict[str, Any] | None  # as recorded by an earlier attempt
    base_samples: list[dict[str, Any]] | None  # the base model's answers, once an attempt measured them


@app.task(
    name=RUN_JOB_TASK,
    # Past the job's maximum runtime, the soft limit raises inside training and the job fails;
    # the hard limit kills a child that did not stop.
    soft_time_limit=settings.max_job_runtime_seconds,
    time_limit=settings.max_job_runtime_seconds + 120,
)
def run_job(job_id: str) -> str:
    """Run the job if it is ours to run, and log how it ended at that outcome's level.

    It returns normally whatever the outcome, so Celery acks the message: the job's end is
    recorded on the job, and a redelivery could only find it finished.
    """
    with job_logging(job_id):
        return _run(job_id)


def _run(job_id: str) -> str:
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _wait_for_database()
    with session_scope() as session:
        lease = runs.claim(
            session,
            job_id,
            owner=owner,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_job_attempts,
            default_running_limit=settings.default_max_running_jobs,
        )
        if lease is None:
            log.info("job %s not claimed: finished, cancelled, or leased by a live worker", job_id)
            return "not claimed"
        snapshot = _snapshot(session, job_id)
        started = (
            "Fine-tuning job started"
            if snapshot.attempt == 1
            else (f"Fine-tuning job restarted (attempt {snapshot.attempt})")
        )
        add_event(session, job_id, started)
    log.info("job %s claimed (attempt %d)", job_id, snapshot.attempt)
    # Imported here, not at the top: the worker imports this module before forking, and preloads the
    # training stack only when LORAQ_WORKER_PRELOAD says so (then these imports cost nothing).
    from worker.report_writer import ReportWriter
    from worker.reporting import JobReporter
    from worker.training import TrainingStopped

    _route_library_logs()
    store = get_store()
    with Heartbeat(
        lease, interval=settings.heartbeat_seconds, lease_seconds=settings.lease_seconds
    ) as heartbeat:
        try:
            with scratch_dir(settings.scratch_dir, job_id) as scratch:
                # Closed (its last batch written) before the result is published: the record's last
                # step comes before "succeeded".
                with ReportWriter(lease, interval=settings.report_interval_seconds) as writer:
                    reporter = JobReporter(
                        lease,
                        heartbeat,
                        writer,
                        store,
                        project_id=snapshot.project_id,
                        scratch=scratch,
                        keep_bundles=snapshot.hyperparameters.save_total_limit,
                    )
                    outcome = _train(snapshot, scratch, store, reporter)
                _publish_result(snapshot, lease, outcome, store)
        except TrainingStopped as stopped:
            log.info("job %s stopped, cancelled or taken over: %s", job_id, stopped)
            return "stopped"
        except Exception as error:
            message = _readable(error)
            # A limit the job ran into (its project's storage) keeps its own code; the rest is training's.
            code = error.code if isinstance(error, LoraqError) and error.code else "training_error"
            log.error("job %s failed: %s", job_id, message, exc_info=True)
            with session_scope() as session:
                runs.fail(session, job_id, message, code=code, lease=lease)
            return "failed"
    log.info("job %s succeeded", job_id)
    return "succeeded"


def _route_library_logs() -> None:
    """transformers logs through this process's handlers (and format), and draws no progress bars."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    # A bar redraws with carriage returns; in a log file each redraw is one more WARNING line.
    hf_logging.disable_progress_bar()
    disable_progress_bars()


def _wait_for_database() -> None:
    """Hold this worker's only slot until the database answers, so it takes no job it cannot record.

    The message is kept meanwhile (late ack); jobs published during the outage are found again by
    the reconciler, so nothing is lost however long the outage lasts.
    """
    delay = 1.0
    while True:
        try:
            with get_engine().connect() as connection:
                ping(connection)
            return
        except OperationalError:
            log.warning(
                "database unreachable; this worker takes no job until it answers (retry in %.0fs)", delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def _snapshot(session: Session, job_id: str) -> JobSnapshot:
    job = jobs_repository.get_job_for_worker(session, job_id)
    training = files_repository.get_file(session, project_id=job.project_id, file_id=job.training_file)
    validation = (
        files_repository.get_file(session, project_id=job.project_id, file_id=job.validation_file)
        if job.validation_file
        else None
    )
    newest = jobs_repository.newest_checkpoint(session, job_id)
    return JobSnapshot(
        id=job.id,
        project_id=job.project_id,
        base_model=job.base_model,
        seed=job.seed,
        # Checked and resolved at create: the stored spec is trusted as it is.
        hyperparameters=ResolvedHyperparameters.model_construct(**job.hyperparameters),
        adapter=AdapterSpec.model_validate(job.adapter),
        dataset_format=training.format or "chat",
        training_key=training.storage_key,
        validation_key=validation.storage_key if validation else None,
        checkpoint=(newest.step_number, newest.storage_key) if newest and newest.storage_key else None,
        continues=_parent_adapter(session, job),
        attempt=job.attempts,
        merged_export=bool((job.export or {}).get("merged")),
        samples=job.samples,
        sample_max_new_tokens=job.sample_max_new_tokens,
        evaluation=job.evaluation,
        base_samples=job.base_samples,
    )


def _parent_adapter(session: Session, job: Job) -> tuple[str, str] | None:
    """The ft: model a job trains further and where its adapter bundle is; None for a new adapter."""
    if job.parent_job_id is None:
        return None
    parent = jobs_repository.get_job_for_worker(session, job.parent_job_id)
    bundle = files_repository.get_file(session, project_id=job.project_id, file_id=parent.result_files[0])
    return job.model, bundle.storage_key


def _train(job: JobSnapshot, scratch: Path, store: ArtifactStore, reporter: JobReporter) -> TrainingOutcome:
    """Fetch the inputs into scratch space and run the training script."""
    from worker.training import TrainingRequest, TrainingStopped, train_adapter

    base = resolve_base_model(job.base_model, settings)
    train_path = scratch / "train.jsonl"
    store.download(job.training_key, train_path)
    validation_path = None
    if job.validation_key is not None:
        validation_path = scratch / "validation.jsonl"
        store.download(job.validation_key, validation_path)
    resume_from = None
    if job.checkpoint is not None:
        step, key = job.checkpoint
        resume_from = _unpack(store, key, scratch / "resume" / f"checkpoint-{step}")
        with session_scope() as session:
            if not runs.resume(session, reporter.lease, from_step=step):
                raise TrainingStopped("the job stopped being ours before it resumed")
    initial_adapter = None
    if job.continues is not None:  # training an ft: model further starts from its adapter's weights
        initial_adapter = _unpack(store, job.continues[1], scratch / "parent-adapter")
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
        initial_adapter=initial_adapter,
        continues=job.continues[0] if job.continues else None,
        samples=job.samples,
        sample_max_new_tokens=job.sample_max_new_tokens,
        evaluation=job.evaluation,
        base_samples=job.base_samples,
        hash_cache_dir=settings.hash_cache_dir,
    )
    return train_adapter(request, reporter)


def _unpack(store: ArtifactStore, key: str, dest: Path) -> Path:
    """An archive from the store (a checkpoint, an adapter bundle), unpacked into dest."""
    archive = dest.with_name(dest.name + ".tar.gz")
    archive.parent.mkdir(parents=True, exist_ok=True)
    store.download(key, archive)
    return unpack(archive, dest)


def _publish_result(job: JobSnapshot, lease: Lease, outcome: TrainingOutcome, store: ArtifactStore) -> None:
    """Store the result bundles and mark the job succeeded, in one transaction, only if still ours."""
    from worker.training import TrainingStopped

    outputs = {"adapter": outcome.bundle_dir, "merged": outcome.merged_dir}
    bundles = []
    for kind, directory in outputs.items():
        if directory is not None:
            bundles.append(pack_dir(directory, directory.parent / f"{job.id}-{kind}.tar.gz"))
    with session_scope() as session:
        results = [
            files_service.create_result_file(
                session,
                project_id=job.project_id,
                filename=bundle.name,
                source=bundle,
                store=store,
                settings=settings,
            )
            for bundle in bundles
        ]
        won = runs.succeed(
            session,
            lease,
            result_files=[result.id for result in results],
            fine_tuned_model=fine_tuned_model_name(
                session, jobs_repository.get_job_for_worker(session, job.id)
            ),
            trained_tokens=outcome.trained_tokens,
        )
        if not won:
            # Cancelled or taken over while exporting: roll back, which also deletes the blobs.
            raise TrainingStopped("the job stopped being ours before its result was recorded")


def _readable(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:1000] if text else type(error).__name__
